"""age keys: bech32 encoding, admin identities, and the ssh-to-age conversion.

A machine's age recipient is derived from its SSH ed25519 host key the way ssh-to-age and
sops-nix do it, so a host decrypts its secrets with the key it already has.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from homestack.errors import UserError

RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"
P = 2**255 - 19

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _GENERATOR[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convertbits(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        raise ValueError("invalid padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Bech32 (BIP 173, no length limit, as age uses it), lower case."""
    values = _convertbits(data, 8, 5, pad=True)
    polymod = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """Return (hrp, data) of a bech32 string; raise ValueError if it is not valid."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("no separator or checksum")
    hrp, rest = text[:pos], text[pos + 1 :]
    try:
        values = [_CHARSET.index(c) for c in rest]
    except ValueError as exc:
        raise ValueError("invalid character") from exc
    if _polymod([*_hrp_expand(hrp), *values]) != 1:
        raise ValueError("bad checksum")
    return hrp, bytes(_convertbits(values[:-6], 5, 8, pad=False))


def parse_recipient(text: str) -> bytes:
    """The 32-byte X25519 public key of an ``age1…`` recipient."""
    try:
        hrp, data = bech32_decode(text)
    except ValueError as exc:
        raise UserError(f"{text!r} is not an age recipient: {exc}") from exc
    if hrp != RECIPIENT_HRP or len(data) != 32:
        raise UserError(f"{text!r} is not an X25519 age recipient")
    return data


def is_age_recipient(text: str) -> bool:
    try:
        parse_recipient(text)
    except UserError:
        return False
    return True


@dataclass(frozen=True)
class AgeIdentity:
    """An X25519 age identity (``AGE-SECRET-KEY-1…``) and its recipient."""

    secret: bytes

    @classmethod
    def generate(cls) -> AgeIdentity:
        raw = X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return cls(raw)

    @classmethod
    def parse(cls, text: str) -> AgeIdentity:
        try:
            hrp, data = bech32_decode(text.strip())
        except ValueError as exc:
            raise UserError(f"not an age identity: {exc}") from exc
        if hrp != IDENTITY_HRP or len(data) != 32:
            raise UserError("not an X25519 age identity (AGE-SECRET-KEY-1…)")
        return cls(data)

    def __str__(self) -> str:
        return bech32_encode(IDENTITY_HRP, self.secret).upper()

    def __repr__(self) -> str:
        return f"AgeIdentity(recipient={self.recipient!r})"

    @property
    def recipient(self) -> str:
        public = X25519PrivateKey.from_private_bytes(self.secret).public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return bech32_encode(RECIPIENT_HRP, raw)


def read_identities(text: str) -> list[AgeIdentity]:
    """Identities in an age key file (``#`` comments and blank lines ignored)."""
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("AGE-SECRET-KEY-1"):
            found.append(AgeIdentity.parse(line))
    return found


def identity_file_text(identity: AgeIdentity, created: str) -> str:
    """An identity file in the layout age-keygen writes."""
    return f"# created: {created}\n# public key: {identity.recipient}\n{identity}\n"


# --- SSH ed25519 -> age -------------------------------------------------------------------


def _ssh_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise ValueError("truncated")
    (length,) = struct.unpack(">I", blob[offset : offset + 4])
    end = offset + 4 + length
    if end > len(blob):
        raise ValueError("truncated")
    return blob[offset + 4 : end], end


def ed25519_public_from_ssh(line: str) -> bytes:
    """The 32 raw bytes of an ``ssh-ed25519 AAAA… [comment]`` public key line."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise UserError(f"not an ssh-ed25519 public key: {line[:40]!r}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        kind, offset = _ssh_string(blob, 0)
        key, offset = _ssh_string(blob, offset)
    except (ValueError, binascii.Error) as exc:
        raise UserError(f"malformed ssh-ed25519 public key: {parts[1][:20]}…") from exc
    if kind != b"ssh-ed25519" or len(key) != 32 or offset != len(blob):
        raise UserError(f"malformed ssh-ed25519 public key: {parts[1][:20]}…")
    return key


def ed25519_to_x25519_public(edwards: bytes) -> bytes:
    """Birational map Edwards y -> Montgomery u = (1 + y) / (1 - y) mod p."""
    y = int.from_bytes(edwards, "little") & ((1 << 255) - 1)
    if y >= P or y == 1:
        raise UserError("ed25519 public key is not a valid curve point for age")
    u = (1 + y) * pow(1 - y, P - 2, P) % P
    return u.to_bytes(32, "little")


def ssh_to_age(public_line: str) -> str:
    """The age recipient (``age1…``) of an SSH ed25519 public key, as ssh-to-age computes it."""
    return bech32_encode(
        RECIPIENT_HRP, ed25519_to_x25519_public(ed25519_public_from_ssh(public_line))
    )


def ed25519_seed_to_identity(seed: bytes) -> AgeIdentity:
    """X25519 secret = clamp(SHA-512(ed25519 seed)[:32]), like ssh-to-age and sops-nix."""
    digest = bytearray(hashlib.sha512(seed).digest()[:32])
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return AgeIdentity(bytes(digest))


def _load_ed25519(pem: bytes, not_ed25519: str) -> Ed25519PrivateKey:
    """An unencrypted OpenSSH ed25519 private key; ``not_ed25519`` says why others won't do."""
    try:
        key = serialization.load_ssh_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"not an unencrypted OpenSSH private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(not_ed25519)
    return key


def ssh_private_to_identity(pem: bytes) -> AgeIdentity:
    """The age identity of an unencrypted OpenSSH ed25519 private key."""
    key = _load_ed25519(pem, "only ssh-ed25519 host keys can be converted to age keys")
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return ed25519_seed_to_identity(seed)


@dataclass(frozen=True)
class HostKey:
    """A freshly generated or imported SSH ed25519 host key pair."""

    private_pem: str
    public_line: str

    @classmethod
    def generate(cls, comment: str) -> HostKey:
        return cls.from_private(Ed25519PrivateKey.generate(), comment)

    @classmethod
    def from_private(cls, key: Ed25519PrivateKey, comment: str) -> HostKey:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        public = (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        return cls(pem, f"{public} {comment}".strip())

    @classmethod
    def load(cls, pem: bytes, comment: str) -> HostKey:
        key = _load_ed25519(pem, "host keys must be ssh-ed25519")
        # Keep the file as it was: sshd gets back exactly the key it had.
        return cls(pem.decode(), cls.from_private(key, comment).public_line)

    def __repr__(self) -> str:
        return f"HostKey(public_line={self.public_line!r})"

    @property
    def age_recipient(self) -> str:
        return ssh_to_age(self.public_line)

    @property
    def age_identity(self) -> AgeIdentity:
        return ssh_private_to_identity(self.private_pem.encode())
