"""Read a sops file's metadata and key names without decrypting anything.

Handles the five sops stores (YAML, JSON, dotenv, INI, binary) as written by sops 3.3 to
3.13: either metadata key order, `kms: null`/`[]` leftovers, flat keys or key groups, and
INI values with real or escaped newlines. Structural damage is collected as `problems`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]

from homestack.errors import UserError
from homestack.fsutil import read_regular

try:  # libyaml is ~10x faster; the pure-Python loader gives the same result
    _Loader: Any = yaml.CBaseLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Loader = yaml.BaseLoader

ENC_RE = re.compile(r"^ENC\[AES256_GCM,data:(.*),iv:(.+),tag:(.+),type:(.+)\]$", re.DOTALL)
VALUE_TYPES = frozenset({"str", "int", "float", "bool", "time", "comment", "bytes"})
OTHER_KEY_TYPES = ("kms", "gcp_kms", "hckms", "azure_kv", "hc_vault")
CRYPT_RULES = (
    "unencrypted_suffix",
    "encrypted_suffix",
    "unencrypted_regex",
    "encrypted_regex",
    "unencrypted_comment_regex",
    "encrypted_comment_regex",
)
AGE_ARMOR_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----"
AGE_ARMOR_END = "-----END AGE ENCRYPTED FILE-----"


class SopsFormatError(UserError):
    """The file is not a readable sops file at all."""


class Store(Enum):
    YAML = "yaml"
    JSON = "json"
    DOTENV = "dotenv"
    INI = "ini"
    BINARY = "binary"

    @classmethod
    def for_path(cls, path: Path) -> Store:
        return {
            ".yaml": cls.YAML,
            ".yml": cls.YAML,
            ".json": cls.JSON,
            ".env": cls.DOTENV,
            ".ini": cls.INI,
        }.get(path.suffix, cls.BINARY)


@dataclass(frozen=True)
class AgeStanza:
    recipient: str
    enc: str


@dataclass(frozen=True)
class KeyGroup:
    age: tuple[AgeStanza, ...]
    pgp: tuple[str, ...]  # fingerprints
    other: tuple[str, ...]  # "kms", "hc_vault", … one entry per key

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(stanza.recipient for stanza in self.age)


@dataclass(frozen=True)
class Leaf:
    """One value of the document: its path of map keys and its text as stored."""

    path: tuple[str, ...]
    value: str | None


@dataclass(frozen=True)
class SopsFile:
    path: Path
    store: Store
    key_groups: tuple[KeyGroup, ...]
    shamir_threshold: int | None
    lastmodified: str | None
    mac: str | None
    version: str | None
    crypt_rule: tuple[str, str] | None
    mac_only_encrypted: bool
    key_paths: frozenset[str]  # every map key, nested ones joined with "/"
    problems: tuple[str, ...]
    values_digest: str = ""  # SHA-256 over every value as stored (ciphertext): "unchanged?"

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every age recipient in every key group, in file order."""
        return tuple(r for group in self.key_groups for r in group.recipients)

    @property
    def pgp(self) -> tuple[str, ...]:
        return tuple(fp for group in self.key_groups for fp in group.pgp)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "store": self.store.value,
            "version": self.version,
            "lastmodified": self.lastmodified,
            "keyGroups": [
                {"age": list(g.recipients), "pgp": list(g.pgp), "other": list(g.other)}
                for g in self.key_groups
            ],
            "shamirThreshold": self.shamir_threshold,
            "keys": sorted(self.key_paths),
            "problems": list(self.problems),
        }


def read_sops_file(path: Path) -> SopsFile:
    """Parse ``path``; raise SopsFormatError if it holds no sops metadata at all."""
    try:
        raw = read_regular(path, what="sops file")
    except UserError as exc:  # a link, a directory, unreadable: not a file sops wrote
        raise SopsFormatError(str(exc)) from exc
    return parse_sops(raw, path)


def parse_sops(raw: bytes, path: Path, store: Store | None = None) -> SopsFile:
    store = store or Store.for_path(path)
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise SopsFormatError(f"{path}: not UTF-8 text, so not a sops file") from exc
    if store is Store.YAML:
        data, meta = _load_yaml(text, path)
    elif store in (Store.JSON, Store.BINARY):
        data, meta = _load_json(text, path)
    elif store is Store.DOTENV:
        data, meta = _load_dotenv(text)
    else:
        data, meta = _load_ini(text)
    if not isinstance(meta, Mapping) or not meta:
        raise SopsFormatError(f"{path}: no sops metadata (not encrypted with sops?)")
    return _build(path, store, data, meta)


# --- loaders: each returns (data tree, metadata mapping) -------------------------------------


def _load_yaml(text: str, path: Path) -> tuple[list[Any], Any]:
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SopsFormatError(f"{path}: invalid YAML{where}") from exc
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise SopsFormatError(f"{path}: top level is not a mapping, so not a sops file")
    meta = docs[0].get("sops")
    return [{k: v for k, v in d.items() if k != "sops"} for d in docs], meta


def _load_json(text: str, path: Path) -> tuple[list[Any], Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SopsFormatError(f"{path}: invalid JSON at line {exc.lineno}") from exc
    if not isinstance(doc, dict):
        raise SopsFormatError(f"{path}: top level is not an object, so not a sops file")
    meta = doc.get("sops")
    return [{k: v for k, v in doc.items() if k != "sops"}], meta


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n")


def _unflatten(flat: Mapping[str, str]) -> dict[str, Any]:
    """Undo sops's flattening of metadata for dotenv/INI (``age__list_0__map_enc``)."""
    root: dict[Any, Any] = {}
    for key, value in flat.items():
        parts = re.split(r"(__map_|__list_)", key)
        path: list[Any] = [parts[0]]
        for sep, name in zip(parts[1::2], parts[2::2], strict=True):
            path.append(int(name) if sep == "__list_" and name.isdigit() else name)
        node = root
        for step in path[:-1]:
            node = node.setdefault(step, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(isinstance(k, int) for k in node):
        return [_lists(node[k]) for k in sorted(node)]
    return {k: _lists(v) for k, v in node.items()}


def _load_dotenv(text: str) -> tuple[list[Any], Any]:
    data: dict[str, str] = {}
    flat: dict[str, str] = {}
    for line in text.split("\n"):
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key.startswith("sops_"):
            flat[key[len("sops_") :]] = _unescape(value)
        else:
            data[key] = value
    return [data], _unflatten(flat)


def _load_ini(text: str) -> tuple[list[Any], Any]:
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("DEFAULT", {})
    lines = iter(text.split("\n"))
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1], {})
            continue
        if "=" not in stripped:
            continue
        key, value = (part.strip() for part in stripped.split("=", 1))
        if value.startswith('"""'):
            value = value[3:]
            chunks = []
            while not value.endswith('"""'):
                chunks.append(value)
                value = next(lines, '"""')
            chunks.append(value[:-3])
            value = "\n".join(chunks)
        current[key] = _unescape(value)
    meta = sections.pop("sops", {})
    if not sections["DEFAULT"]:
        del sections["DEFAULT"]
    return [sections], _unflatten(meta)


# --- metadata --------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _group(node: Mapping[str, Any], problems: list[str]) -> KeyGroup:
    age = []
    for entry in _as_list(node.get("age")):
        if not isinstance(entry, Mapping) or not entry.get("recipient") or not entry.get("enc"):
            problems.append("age entry without recipient or enc")
            continue
        age.append(AgeStanza(str(entry["recipient"]).strip(), str(entry["enc"])))
    pgp = tuple(
        str(entry.get("fp", "?"))
        for entry in _as_list(node.get("pgp"))
        if isinstance(entry, Mapping)
    )
    other = tuple(kind for kind in OTHER_KEY_TYPES for _ in _as_list(node.get(kind)))
    return KeyGroup(tuple(age), pgp, other)


def _key_groups(meta: Mapping[str, Any], problems: list[str]) -> tuple[KeyGroup, ...]:
    flat = _group(meta, problems)
    if flat.age or flat.pgp or flat.other:
        groups: tuple[KeyGroup, ...] = (flat,)
    else:
        groups = tuple(
            _group(g, problems) for g in _as_list(meta.get("key_groups")) if isinstance(g, Mapping)
        )
    if not any(g.age or g.pgp or g.other for g in groups):
        problems.append("no keys: nobody can decrypt it")
    return groups


def _time_and_mac_problems(
    meta: Mapping[str, Any], problems: list[str]
) -> tuple[str | None, str | None]:
    lastmodified = meta.get("lastmodified")
    lastmodified = None if lastmodified is None else str(lastmodified)
    if lastmodified is None:
        problems.append("no lastmodified")
    else:
        try:
            datetime.fromisoformat(lastmodified.replace("Z", "+00:00"))
        except ValueError:
            problems.append(f"lastmodified {lastmodified!r} is not an RFC 3339 time")
    mac = meta.get("mac")
    mac = None if mac in (None, "") else str(mac)
    if mac is None:
        problems.append("no MAC: sops refuses to decrypt it")
    else:
        problem = enc_problem(mac, expect_len=128)
        if problem:
            problems.append(f"MAC is broken: {problem}")
    return lastmodified, mac


def _build(path: Path, store: Store, docs: list[Any], meta: Mapping[str, Any]) -> SopsFile:
    problems: list[str] = []
    groups = _key_groups(meta, problems)
    threshold = meta.get("shamir_threshold")
    shamir = (
        int(threshold) if isinstance(threshold, (int, str)) and str(threshold).isdigit() else None
    )

    rules = [(name, str(meta[name])) for name in CRYPT_RULES if meta.get(name) not in (None, "")]
    if len(rules) > 1:
        problems.append(f"more than one encryption rule: {', '.join(n for n, _ in rules)}")
    crypt_rule = rules[0] if rules else None
    mac_only = str(meta.get("mac_only_encrypted", "")).lower() == "true"

    lastmodified, mac = _time_and_mac_problems(meta, problems)

    for group in groups:
        for stanza in group.age:
            problem = age_stanza_problem(stanza)
            if problem:
                problems.append(f"age stanza for {stanza.recipient[:24]}…: {problem}")

    key_paths: set[str] = set()
    digest = hashlib.sha256()
    for leaf in _walk(docs, (), key_paths):
        digest.update(repr((leaf.path, leaf.value)).encode())
        if leaf.value in (None, "", "null", "~") or not _should_encrypt(crypt_rule, leaf.path):
            continue
        if not leaf.value.startswith("ENC["):
            problems.append(f"value {'/'.join(leaf.path) or '(list)'} is not encrypted")
            continue
        problem = enc_problem(leaf.value)
        if problem:
            problems.append(f"value {'/'.join(leaf.path)} is broken: {problem}")

    version = meta.get("version")
    return SopsFile(
        path=path,
        store=store,
        key_groups=groups,
        shamir_threshold=shamir,
        lastmodified=lastmodified,
        mac=mac,
        version=None if version is None else str(version),
        crypt_rule=crypt_rule,
        mac_only_encrypted=mac_only,
        key_paths=frozenset(key_paths),
        problems=tuple(problems),
        values_digest=digest.hexdigest(),
    )


def _walk(node: Any, path: tuple[str, ...], keys: set[str]) -> Iterator[Leaf]:
    # List items share their parent's path, exactly as sops computes the AAD.
    if isinstance(node, dict):
        for key, value in node.items():
            child = (*path, str(key))
            keys.add("/".join(child))
            yield from _walk(value, child, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, path, keys)
    else:
        yield Leaf(path, None if node is None else str(node))


def _should_encrypt(rule: tuple[str, str] | None, path: tuple[str, ...]) -> bool:
    name, value = rule or ("unencrypted_suffix", "_unencrypted")
    if name == "unencrypted_suffix":
        return not any(part.endswith(value) for part in path)
    if name == "encrypted_suffix":
        return any(part.endswith(value) for part in path)
    if name in ("unencrypted_regex", "encrypted_regex"):
        try:
            pattern = re.compile(value)
        except re.error:
            return False
        hit = any(pattern.search(part) for part in path)
        return hit if name == "encrypted_regex" else not hit
    return False  # comment rules: the comments are not visible here


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def enc_problem(value: str, expect_len: int | None = None) -> str | None:  # noqa: PLR0911
    """What is wrong with an ``ENC[AES256_GCM,…]`` string, or None."""
    match = ENC_RE.match(value)
    if not match:
        return "not an ENC[AES256_GCM,…] value"
    data, iv, tag, kind = match.groups()
    try:
        data_raw, iv_raw, tag_raw = _b64(data), _b64(iv), _b64(tag)
    except (binascii.Error, ValueError):
        return "bad base64"
    if kind not in VALUE_TYPES:
        return f"unknown type {kind!r}"
    if len(tag_raw) != 16:
        return "tag is not 16 bytes"
    if not iv_raw:
        return "empty IV"
    if expect_len is not None and len(data_raw) != expect_len:
        return f"ciphertext is {len(data_raw)} bytes, expected {expect_len}"
    return None


def _ssh_tag(recipient: str) -> str | None:
    parts = recipient.split()
    if len(parts) < 2:
        return None
    try:
        blob = _b64(parts[1])
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(hashlib.sha256(blob).digest()[:4]).decode().rstrip("=")


def age_stanza_problem(stanza: AgeStanza) -> str | None:  # noqa: PLR0911
    """Structural check of one wrapped data key (an armored age file with one recipient)."""
    lines = [line.strip() for line in stanza.enc.strip().splitlines()]
    if len(lines) < 3 or lines[0] != AGE_ARMOR_BEGIN or lines[-1] != AGE_ARMOR_END:
        return "not an armored age file"
    try:
        raw = _b64("".join(lines[1:-1]))
    except (binascii.Error, ValueError):
        return "bad base64 in the armor"
    header, sep, payload = raw.partition(b"\n--- ")
    if not header.startswith(b"age-encryption.org/v1\n") or not sep:
        return "not an age v1 header"
    _, _, payload = payload.partition(b"\n")
    if len(payload) not in (16 + 32 + 16, 16 + 33 + 16):  # nonce + data key (or share) + tag
        return f"payload is {len(payload)} bytes, not a wrapped sops data key"
    stanzas = [
        line.split(" ")[1:]
        for line in header.decode(errors="replace").split("\n")
        if line.startswith("-> ")
    ]
    if stanza.recipient.startswith("age1"):
        if not any(s and s[0] == "X25519" for s in stanzas):
            return "no X25519 stanza for an age1 recipient"
    elif stanza.recipient.startswith("ssh-ed25519 "):
        tag = _ssh_tag(stanza.recipient)
        if not any(len(s) >= 2 and s[0] == "ssh-ed25519" and s[1] == tag for s in stanzas):
            return "no ssh-ed25519 stanza for this key"
    return None
