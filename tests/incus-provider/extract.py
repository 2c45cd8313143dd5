"""Extract the resource schemas Homestack's OpenTofu export uses from the lxc/incus
provider's Go source (terraform-plugin-framework `Schema()` methods) into schema.json.

Run from anywhere: python3 extract.py PROVIDER_CHECKOUT TAG > schema.json
(see PROVENANCE.md). Reads `git show TAG:FILE`; nothing is fetched.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

RESOURCES = {
    "incus_image": "internal/image/resource_image.go",
    "incus_instance": "internal/instance/resource_instance.go",
    "incus_network_acl": "internal/network/resource_network_acl.go",
    "incus_network_zone": "internal/network/resource_network_zone.go",
    "incus_network_zone_record": "internal/network/resource_network_zone_record.go",
    "incus_profile": "internal/profile/resource_profile.go",
    "incus_storage_volume": "internal/storage/resource_storage_volume.go",
}
ENTRY = re.compile(r'^(\t+)"([a-z_]+)": schema\.(\w+)\{')
FLAG = re.compile(r"^\t+(Required|Optional|Computed):\s+true,")
HELPER = re.compile(r"^(\t+)Attributes: (\w+)\(\),")
ONE_OF = re.compile(r"OneOf\(([^)]*)\)")


def function_body(source: str, pattern: str) -> list[str]:
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(pattern, line))
    end = next(i for i in range(start + 1, len(lines)) if lines[i] == "}")
    return lines[start + 1 : end]


def parse(lines: list[str], source: str, shift: int = 0) -> dict[str, Any]:
    root: dict[str, Any] = {"children": {}}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for line in lines:
        m = ENTRY.match(line)
        if m:
            depth = len(m.group(1)) + shift
            while stack[-1][0] >= depth:
                stack.pop()
            kind = m.group(3)
            node: dict[str, Any] = {"kind": kind, "children": {}}
            stack[-1][1]["children"][m.group(2)] = node
            stack.append((depth, node))
            continue
        m = HELPER.match(line)
        if m:
            body = function_body(source, rf"^func {m.group(2)}\(")
            depth = len(m.group(1)) + shift
            while stack[-1][0] >= depth:
                stack.pop()
            inner = parse(body, source, depth - 1)
            stack[-1][1]["children"].update(inner["children"])
            continue
        f = FLAG.match(line)
        if f and len(stack) > 1:
            stack[-1][1][f.group(1).lower()] = True
        o = ONE_OF.search(line)
        if o and len(stack) > 1:
            stack[-1][1]["one_of"] = json.loads("[" + o.group(1) + "]")
    return root


def clean(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, child in sorted(node["children"].items()):
        entry = {k: v for k, v in child.items() if k != "children"}
        if child["children"]:
            entry["attributes"] = clean(child)
        out[name] = entry
    return out


def main() -> None:
    checkout, tag = sys.argv[1], sys.argv[2]
    result: dict[str, Any] = {}
    for name, path in RESOURCES.items():
        source = subprocess.run(
            ["git", "-C", checkout, "show", f"{tag}:{path}"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        body = function_body(source, r"^func \(\w+ \*?\w+\) Schema\(")
        result[name] = clean(parse(body, source))
    json.dump({"provider": "lxc/incus", "tag": tag, "resources": result}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
