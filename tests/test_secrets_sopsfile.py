"""sopsfile: damage that `check` must see without decrypting, and that sops itself refuses."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_secrets_helpers import VECTORS

from homestack.errors import UserError
from homestack.secrets.sops import Sops
from homestack.secrets.sopsfile import (
    SopsFormatError,
    Store,
    parse_sops,
    read_sops_file,
)

G = VECTORS / "generated"
ALICE = Sops(env={"SOPS_AGE_KEY_FILE": str(G / "alice.agekey")})
SOURCE = (G / "lifecycle.v1.enc.yaml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "file.yaml"
    path.write_text(text)
    return path


def test_intact_file_has_no_problems(tmp_path: Path) -> None:
    assert read_sops_file(write(tmp_path, SOURCE)).problems == ()


def test_changed_ciphertext_is_caught_by_sops(tmp_path: Path) -> None:
    # a flipped ciphertext byte keeps the format valid: only the MAC check (sops) sees it
    match = re.search(r"k1: ENC\[AES256_GCM,data:([^,]+),", SOURCE)
    assert match
    data = match.group(1)
    flipped = ("A" if data[0] != "A" else "B") + data[1:]
    path = write(tmp_path, SOURCE.replace(data, flipped, 1))
    with pytest.raises(UserError, match=r"sops decrypt failed"):
        ALICE.decrypt(path)


def test_swapped_values_fail_the_mac(tmp_path: Path) -> None:
    lines = SOURCE.splitlines(keepends=True)
    k1 = next(i for i, line in enumerate(lines) if line.startswith("k1:"))
    k2 = next(i for i, line in enumerate(lines) if line.startswith("k2:"))
    lines[k1], lines[k2] = "k1:" + lines[k2][3:], "k2:" + lines[k1][3:]
    with pytest.raises(UserError, match="decrypt failed"):
        ALICE.decrypt(write(tmp_path, "".join(lines)))


def test_missing_mac_is_a_problem_and_sops_refuses(tmp_path: Path) -> None:
    path = write(tmp_path, re.sub(r"\n    mac: .*", "", SOURCE))
    assert any("no MAC" in p for p in read_sops_file(path).problems)
    with pytest.raises(UserError, match=r"MAC|decrypt failed"):
        ALICE.decrypt(path)


def test_truncated_mac_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, re.sub(r"(mac: ENC\[AES256_GCM,data:)....", r"\1", SOURCE))
    assert any("MAC is broken" in p for p in read_sops_file(path).problems)


def test_truncated_age_stanza_is_a_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        re.sub(r"\n\s+[A-Za-z0-9+/=]{20,}\n(\s+-----END AGE)", r"\n\1", SOURCE, count=1),
    )
    problems = read_sops_file(path).problems
    assert any("age stanza" in p for p in problems), problems


def test_plaintext_value_pasted_into_a_sops_file_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "leaked: hunter2\n" + SOURCE)
    assert "value leaked is not encrypted" in read_sops_file(path).problems


def test_unencrypted_suffix_values_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "note_unencrypted: hello\n" + SOURCE)
    assert read_sops_file(path).problems == ()


def test_not_a_sops_file(tmp_path: Path) -> None:
    with pytest.raises(SopsFormatError, match="no sops metadata"):
        read_sops_file(write(tmp_path, "a: 1\n"))
    with pytest.raises(SopsFormatError, match="invalid YAML"):
        read_sops_file(write(tmp_path, "a: [\n"))


def test_missing_lastmodified_and_bad_time(tmp_path: Path) -> None:
    no_time = read_sops_file(write(tmp_path, re.sub(r"\n    lastmodified: .*", "", SOURCE)))
    assert "no lastmodified" in no_time.problems
    bad = read_sops_file(
        write(tmp_path, re.sub(r'lastmodified: ".*"', 'lastmodified: "yesterday"', SOURCE))
    )
    assert any("RFC 3339" in p for p in bad.problems)


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_any_bytes_give_a_result_or_a_format_error(data: bytes) -> None:
    for store in Store:
        with contextlib.suppress(SopsFormatError):
            parse_sops(data, Path("x"), store)


@given(st.integers(min_value=0, max_value=len(SOURCE) - 1), st.characters(codec="ascii"))
@settings(max_examples=200, deadline=None)
def test_one_changed_character_never_crashes_the_reader(position: int, char: str) -> None:
    text = SOURCE[:position] + char + SOURCE[position + 1 :]
    with contextlib.suppress(SopsFormatError):
        parse_sops(text.encode(), Path("x.yaml"))
