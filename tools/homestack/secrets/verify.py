"""Check, with the admin's own age key, that a re-keyed file still opens: unwrap the data
key from the admin's stanza and authenticate the file's MAC with it.

This is what `sync` does for each copy after `sops updatekeys`, in-process: the values and
the MAC are unchanged by updatekeys, so a data key that authenticates the MAC is the key
that decrypts every value. (Copies whose data key was rotated are verified with a full
`sops decrypt` instead.) The age format: https://age-encryption.org/v1.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import os
from collections.abc import Mapping
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from homestack.errors import UserError
from homestack.secrets.agekeys import AgeIdentity, parse_recipient, read_identities
from homestack.secrets.sopsfile import AGE_ARMOR_BEGIN, AGE_ARMOR_END, ENC_RE, SopsFile


class VerifyError(Exception):
    """The data key or the MAC did not open."""


def _b64(text: bytes | str) -> bytes:
    raw = text if isinstance(text, bytes) else text.encode()
    try:
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except binascii.Error as exc:
        raise VerifyError("bad base64") from exc


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def unwrap(armored: str, identity: AgeIdentity) -> bytes:
    """The plaintext of a small armored age file encrypted to ``identity`` (X25519)."""
    lines = [line.strip() for line in armored.strip().splitlines()]
    if not lines or lines[0] != AGE_ARMOR_BEGIN or lines[-1] != AGE_ARMOR_END:
        raise VerifyError("not an armored age file")
    raw = base64.b64decode("".join(lines[1:-1]))
    header_end = raw.find(b"\n--- ")
    if header_end < 0:
        raise VerifyError("no age header")
    payload_start = raw.index(b"\n", header_end + 1) + 1
    header, mac_line, payload = (
        raw[: header_end + 4],
        raw[header_end + 5 : payload_start - 1],
        raw[payload_start:],
    )
    ours = parse_recipient(identity.recipient)
    secret = X25519PrivateKey.from_private_bytes(identity.secret)
    file_key = None
    body_lines = header.split(b"\n")
    for i, line in enumerate(body_lines):
        if not line.startswith(b"-> X25519 "):
            continue
        share = _b64(line.split(b" ")[2])
        body = b""
        for chunk in body_lines[i + 1 :]:
            body += chunk
            if len(chunk) < 64:
                break
        shared = secret.exchange(X25519PublicKey.from_public_bytes(share))
        key = _hkdf(shared, share + ours, b"age-encryption.org/v1/X25519")
        try:
            file_key = ChaCha20Poly1305(key).decrypt(b"\x00" * 12, _b64(body), None)
            break
        except InvalidTag:
            continue
    if file_key is None:
        raise VerifyError("no stanza opens with this identity")
    expected = hmac.new(_hkdf(file_key, b"", b"header"), header, sha256).digest()
    if not hmac.compare_digest(expected, _b64(mac_line)):
        raise VerifyError("age header MAC mismatch")
    nonce, ciphertext = payload[:16], payload[16:]
    stream_key = _hkdf(file_key, nonce, b"payload")
    try:
        return ChaCha20Poly1305(stream_key).decrypt(b"\x00" * 11 + b"\x01", ciphertext, None)
    except InvalidTag as exc:
        raise VerifyError("age payload does not authenticate") from exc


def data_key(sops_file: SopsFile, identities: list[AgeIdentity]) -> bytes:
    """The file's data key, from the first stanza one of ``identities`` opens."""
    by_recipient = {i.recipient: i for i in identities}
    for group in sops_file.key_groups:
        for stanza in group.age:
            identity = by_recipient.get(stanza.recipient)
            if identity is not None:
                return unwrap(stanza.enc, identity)
    raise VerifyError("none of the given identities is a recipient")


def open_mac(sops_file: SopsFile, key: bytes) -> str:
    """Decrypt the MAC with ``key``; AES-GCM fails unless it is this file's data key."""
    match = ENC_RE.match(sops_file.mac or "")
    if match is None or sops_file.lastmodified is None:
        raise VerifyError("no MAC")
    data, iv, tag, _ = match.groups()
    try:
        plain = AESGCM(key).decrypt(
            _b64(iv), _b64(data) + _b64(tag), sops_file.lastmodified.encode()
        )
    except (InvalidTag, ValueError) as exc:
        raise VerifyError("the data key does not open the MAC") from exc
    return plain.decode()


def local_identities(env: Mapping[str, str]) -> list[AgeIdentity]:
    """The X25519 identities sops would find in SOPS_AGE_KEY, SOPS_AGE_KEY_FILE and the
    default key file (other sources, such as SOPS_AGE_KEY_CMD, are left to sops)."""
    merged = {**os.environ, **env}
    texts = [merged.get("SOPS_AGE_KEY", "")]
    files = [merged.get("SOPS_AGE_KEY_FILE")]
    config = merged.get("XDG_CONFIG_HOME") or str(
        Path(merged.get("HOME", "~")).expanduser() / ".config"
    )
    files.append(str(Path(config) / "sops" / "age" / "keys.txt"))
    for name in files:
        if name:
            try:
                texts.append(Path(name).read_text())
            except OSError:
                continue
    found: list[AgeIdentity] = []
    for text in texts:
        with contextlib.suppress(UserError):  # a key file sops itself would reject
            found += read_identities(text.replace(" ", "\n"))
    return found
