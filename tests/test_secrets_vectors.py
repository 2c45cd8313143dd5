"""Every sops vector: decrypted by the real sops through our wrapper, and its metadata and
key names read by sopsfile without decrypting (files written by sops 3.5 to 3.11, plus
3.3-style and 3.13-style variants derived from them)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from test_secrets_helpers import VECTORS

from homestack.errors import UserError
from homestack.secrets.sops import Sops
from homestack.secrets.sopsfile import Store, parse_sops, read_sops_file

G = VECTORS / "generated"
N = VECTORS / "sops-nix"


def public(key_file: Path) -> list[str]:
    return re.findall(r"# public key: (age1\w+)", key_file.read_text())


ALICE, BOB, CAROL = (public(G / f"{n}.agekey")[0] for n in ("alice", "bob", "carol"))
SSH = (G / "ssh_ed25519.pub").read_text().strip()

# file -> (sops version, key file for SOPS_AGE_KEY_FILE or "pgp"/"ssh", age recipients per group)
CASES: dict[str, tuple[str, str, list[list[str]]]] = {
    "sops-nix/secrets.yaml": (
        "3.7.1",
        "sops-nix/age-keys.txt",
        [
            [
                "age1yt3tfqlfrwdwx0z0ynwplcr6qxcxfaqycuprpmy89nr83ltx74tqdpszlw",
                "age1a8pk4akrdamj7nvqy3zywgtny8dxz7t5xzu7u8v9mhrayp9freqsqatyrs",
            ]
        ],
    ),
    "sops-nix/secrets.json": ("3.5.0", "pgp", [[]]),
    "sops-nix/secrets.env": ("3.7.3", "pgp", [[]]),
    "sops-nix/secrets.ini": ("3.7.3", "pgp", [[]]),
    "sops-nix/secrets.bin": ("3.5.0", "pgp", [[]]),
    "generated/types.enc.yaml": ("3.11.0", "generated/bob.agekey", [[ALICE, BOB]]),
    "generated/types.enc.json": ("3.11.0", "generated/alice.agekey", [[ALICE]]),
    "generated/dotenv.enc.env": ("3.11.0", "generated/alice.agekey", [[ALICE]]),
    "generated/ini.enc.ini": ("3.11.0", "generated/alice.agekey", [[ALICE]]),
    "generated/multidoc.enc.yaml": ("3.11.0", "generated/alice.agekey", [[ALICE]]),
    "generated/regex.enc.yaml": ("3.11.0", "generated/alice.agekey", [[ALICE]]),
    "generated/suffix.enc.yaml": ("3.11.0", "generated/alice.agekey", [[ALICE]]),
    "generated/unenc-re.enc.yaml": ("3.11.0", "generated/alice.agekey", [[ALICE]]),
    "generated/default.enc.yaml": ("3.11.0", "generated/bob.agekey", [[ALICE, BOB]]),
    "generated/lifecycle.v1.enc.yaml": ("3.11.0", "generated/alice.agekey", [[ALICE]]),
    "generated/lifecycle.v2-set.enc.yaml": (
        "3.11.0",
        "generated/alice.agekey",
        [[ALICE]],
    ),
    "generated/lifecycle.v3-updatekeys.enc.yaml": (
        "3.11.0",
        "generated/carol.agekey",
        [[ALICE, CAROL]],
    ),
    "generated/lifecycle.v4-rotate.enc.yaml": (
        "3.11.0",
        "generated/carol.agekey",
        [[ALICE, CAROL]],
    ),
    "generated/binary.enc.bin": ("3.11.0", "generated/alice.agekey", [[ALICE]]),
    "generated/shamir.enc.yaml": (
        "3.11.0",
        "generated/alice+dave.agekey",
        [[ALICE], [BOB, CAROL], public(G / "dave.agekey")],
    ),
    "generated/ssh.enc.yaml": ("3.11.0", "ssh", [[SSH]]),
}
EMITTER = sorted((G / "yaml-emitter").glob("*.enc.yaml"))


@pytest.fixture(scope="module")
def gnupghome(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("gpg"):
        pytest.skip("the PGP vectors need gpg (Debian: gnupg)")
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    subprocess.run(
        ["gpg", "--batch", "--import", str(N / "key.asc")],
        env={"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )
    return home


def sops_for(how: str, gnupghome: Path | None) -> Sops:
    if how == "pgp":
        return Sops(env={"GNUPGHOME": str(gnupghome), "SOPS_AGE_KEY_FILE": "/nonexistent"})
    if how == "ssh":
        return Sops(env={"SOPS_AGE_SSH_PRIVATE_KEY_FILE": str(G / "ssh_ed25519")})
    return Sops(env={"SOPS_AGE_KEY_FILE": str(VECTORS / how)})


@pytest.mark.parametrize("name", sorted(CASES))
def test_vector_decrypts_to_the_expected_plaintext(
    name: str, request: pytest.FixtureRequest
) -> None:
    path = VECTORS / name
    how = CASES[name][1]
    gnupghome = request.getfixturevalue("gnupghome") if how == "pgp" else None
    text = sops_for(how, gnupghome).decrypt(path)
    expected = (VECTORS / (name + ".decrypted")).read_bytes().decode(errors="replace")
    assert text == expected


def test_shamir_needs_two_groups() -> None:
    with pytest.raises(UserError, match=r"cannot|none of your age identities|failed"):
        sops_for("generated/bob+carol.agekey", None).decrypt(G / "shamir.enc.yaml")


@pytest.mark.parametrize("path", EMITTER, ids=lambda p: p.name)
def test_emitter_vectors_decrypt(path: Path) -> None:
    assert sops_for("generated/alice.agekey", None).decrypt(path)


def plaintext_keys(name: str) -> set[str]:
    """Key paths of the expected plaintext, computed independently of sopsfile."""
    raw = (VECTORS / (name + ".decrypted")).read_bytes()
    keys: set[str] = set()

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                keys.add("/".join((*path, str(k))))
                walk(v, (*path, str(k)))
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    store = Store.for_path(Path(name))
    if store is Store.BINARY:
        return {"data"}
    text = raw.decode()
    if store is Store.YAML:
        for doc in yaml.load_all(text, Loader=yaml.BaseLoader):
            walk(doc, ())
    elif store is Store.JSON:
        walk(json.loads(text), ())
    elif store is Store.DOTENV:
        keys = {
            line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")
        }
    else:
        section = "DEFAULT"
        for row in text.splitlines():
            line = row.strip()
            if line.startswith("["):
                section = line[1:-1]
                keys.add(section)
            elif "=" in line and not line.startswith((";", "#")):
                keys.add(f"{section}/{line.split('=', 1)[0].strip()}")
    return keys


@pytest.mark.parametrize("name", sorted(CASES))
def test_vector_metadata_without_decrypting(name: str) -> None:
    version, _, groups = CASES[name]
    sops_file = read_sops_file(VECTORS / name)
    assert sops_file.problems == ()
    assert sops_file.version == version
    assert [list(g.recipients) for g in sops_file.key_groups] == groups
    assert sops_file.mac and sops_file.lastmodified
    assert sops_file.key_paths == plaintext_keys(name)
    if name.startswith("sops-nix/") and name != "sops-nix/secrets.yaml":
        assert sops_file.pgp and "7FB89715AADA920D65D25E63F9BA9DEBD03F57C0" in sops_file.pgp
    if name == "generated/shamir.enc.yaml":
        assert sops_file.shamir_threshold == 2


# --- other sops versions' layouts, derived from real files ----------------------------------


def as_sops_313(text: str) -> str:
    """3.13 writes metadata keys sorted, and each age entry as `enc` then `recipient`."""
    doc = yaml.safe_load(text)

    def sort(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: sort(node[k]) for k in sorted(node)}
        if isinstance(node, list):
            return [sort(i) for i in node]
        return node

    doc["sops"] = sort(doc["sops"])
    doc["sops"]["version"] = "3.13.2"
    return yaml.safe_dump(doc, sort_keys=False, width=1000)


def as_sops_33(text: str) -> str:
    """sops 3.3-3.6 used a yaml.v2 fork: `-   ` list items, empty kms lists, quoted times."""
    doc = yaml.safe_load(text)
    meta = doc.pop("sops")
    meta = {"kms": [], "gcp_kms": [], "azure_kv": [], "hc_vault": [], **meta, "pgp": []}
    meta["version"] = "3.3.1"

    class Dumper(yaml.SafeDumper):
        pass

    def literal(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, literal)
    # PyYAML's indentless `-   item` lists with indent 4 are the yaml.v2 layout
    out = yaml.dump({**doc, "sops": meta}, Dumper=Dumper, sort_keys=False, indent=4, width=1000)
    assert "-   " in out
    return out


@pytest.mark.parametrize("convert", [as_sops_313, as_sops_33], ids=["3.13", "3.3"])
@pytest.mark.parametrize("name", ["types.enc.yaml", "shamir.enc.yaml", "suffix.enc.yaml"])
def test_other_versions_layouts_read_the_same(name: str, convert: Any, tmp_path: Path) -> None:
    original = read_sops_file(G / name)
    variant = tmp_path / name
    variant.write_text(convert((G / name).read_text()))
    read = read_sops_file(variant)
    assert read.problems == ()
    assert read.key_groups == original.key_groups
    assert read.key_paths == original.key_paths
    assert read.mac == original.mac


def test_sops_reads_the_derived_layouts_too(tmp_path: Path) -> None:
    # the reordered metadata is still a valid sops file: sops decrypts it
    for convert in (as_sops_313, as_sops_33):
        variant = tmp_path / "lifecycle.enc.yaml"
        variant.write_text(convert((G / "lifecycle.v4-rotate.enc.yaml").read_text()))
        text = sops_for("generated/carol.agekey", None).decrypt(variant)
        assert text == (G / "lifecycle.v4-rotate.enc.yaml.decrypted").read_text()


def test_ini_with_real_newlines_as_313_wrote_them(tmp_path: Path) -> None:
    original = (G / "ini.enc.ini").read_text()

    def real_newlines(match: re.Match[str]) -> str:
        return f'{match.group(1)}"""{match.group(2).replace(chr(92) + "n", chr(10))}"""'

    variant = re.sub(
        r"^(age__list_0__map_enc\s*=\s*)(-----BEGIN.*)$",
        real_newlines,
        original,
        flags=re.MULTILINE,
    )
    assert variant != original
    path = tmp_path / "ini.enc.ini"
    path.write_text(variant)
    assert read_sops_file(path).key_groups == read_sops_file(G / "ini.enc.ini").key_groups
    assert read_sops_file(path).problems == ()


def test_json_with_null_key_lists(tmp_path: Path) -> None:
    # sops 3.5 wrote "kms": null; the reader must not trip over it
    assert parse_sops((N / "secrets.json").read_bytes(), Path("x.json")).problems == ()


def test_every_vector_file_is_covered() -> None:
    encrypted = {
        p.relative_to(VECTORS).as_posix()
        for p in VECTORS.rglob("*")
        if p.is_file()
        and (".enc." in p.name or p.name.startswith("secrets."))
        and not p.name.endswith(".decrypted")
        and "yaml-emitter" not in p.parts
    }
    assert encrypted == set(CASES)
