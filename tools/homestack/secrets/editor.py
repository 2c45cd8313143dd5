"""The editor sops runs for `tools secrets edit`: the user's editor, then a validity check.

sops keeps the old file when its editor exits non-zero, so refusing here keeps the old
file when the user's editor fails or leaves a document sops would reject. On a terminal
the user is offered the editor again on the same text, so a typo does not lose the edit.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]

from homestack.errors import UserError
from homestack.process import default_runner

REAL_EDITOR = "HOMESTACK_EDITOR"


class _StrictLoader(yaml.SafeLoader):
    """Rejects what sops rejects: duplicate keys and non-string keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is not a string", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def problem(path: Path) -> str | None:  # noqa: PLR0911 - one return per kind of rejection
    """Why sops would reject the edited plaintext, or None."""
    text = path.read_text()
    try:
        if path.suffix == ".json":
            docs = [json.loads(text)]
        elif path.suffix in (".yaml", ".yml"):
            docs = list(yaml.load_all(text, Loader=_StrictLoader))
        else:
            return None
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} at line {exc.lineno}"
    except yaml.YAMLError as exc:
        # Only the position: the error's snippet would echo plaintext.
        mark = getattr(exc, "problem_mark", None)
        what = getattr(exc, "problem", None) or "syntax error"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"not valid YAML: {what}{where}"
    docs = [d for d in docs if d is not None]
    if not docs:
        return "the document is empty"
    if not all(isinstance(d, dict) for d in docs):
        return "the top level must be a mapping"
    if any("sops" in d for d in docs):
        return "a top-level key named 'sops' is reserved by sops"
    return None


def _ask_again(why: str) -> bool:
    """On a terminal, offer to re-open the editor on the same text (still on the private
    tmpfs); without one there is nobody to ask."""
    if not sys.stdin.isatty():
        print(f"edit: {why}; your changes were discarded (no terminal to ask on)", file=sys.stderr)
        return False
    print(f"edit: {why}", file=sys.stderr)
    print("re-open the editor with your changes? [Y/n] ", file=sys.stderr, end="", flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer in ("", "y", "yes"):
        return True
    print("edit: your changes were discarded", file=sys.stderr)
    return False


def main(argv: list[str]) -> int:
    path = Path(argv[-1])
    editor = shlex.split(os.environ.get(REAL_EDITOR) or "vi")
    while True:
        try:
            result = default_runner.run([*editor, str(path)], check=False, capture=False)
        except UserError as exc:
            print(f"edit: {exc} (set $EDITOR to your editor)", file=sys.stderr)
            return 1
        if result.returncode != 0:
            print(f"edit: the editor exited with code {result.returncode}", file=sys.stderr)
            return 1
        why = problem(path)
        if not why:
            return 0
        # The text is only on the private tmpfs; sops deletes it when we exit non-zero.
        if not _ask_again(why):
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
