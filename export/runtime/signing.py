"""Signed releases: an Ed25519 signature over ``manifest.json``, which hashes every other file.

``compress keys new`` makes a key pair; ``package --sign KEY`` writes ``manifest.sig`` beside the
manifest; ``verify --trust KEY.pub`` accepts the archive only when that signature verifies with one
of the trusted public keys. An edited manifest (a flipped "released despite a failed gate" flag, a
raised quality) no longer matches its signature, and a file changed after packaging no longer
matches the manifest's sha256. The private key never leaves the machine that packages.

Keys are files: the private key as unencrypted PKCS#8 PEM (mode 0600), the public key as one line,
``ed25519 BASE64``. The ``cryptography`` package does the mathematics.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from export.base.errors import CompressError
from export.base.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_FILE = "manifest.sig"
ALGORITHM = "ed25519"
_PUBLIC_PREFIX = f"{ALGORITHM} "


@dataclass(frozen=True)
class ManifestSignature:
    """The contents of ``manifest.sig``."""

    algorithm: str
    key_id: str  # sha256 of the raw public key, first 16 hex digits: how people name a key
    public_key: str  # base64 of the raw 32-byte public key
    signature: str  # base64 of the 64-byte signature over manifest.json's exact bytes

    def dumps(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode("utf-8")


@dataclass(frozen=True)
class KeyPair:
    """Where ``new_key_pair`` wrote the keys, and the public key's id."""

    private: Path
    public: Path
    key_id: str


def key_id(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def new_key_pair(private_path: str | os.PathLike[str]) -> KeyPair:
    """Write a new private key to ``private_path`` (0600) and its public key beside it (``.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = Path(private_path)
    if not private_path.stem or private_path.stem.startswith("."):
        raise CompressError(f"key name {str(private_path)!r}: give the key a file name, e.g. release-2026")
    public_path = private_path.with_suffix(".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise CompressError(f"{path} exists; a key is never overwritten (choose another name)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write_bytes(private_path, pem, mode=0o600)  # 0600 from the first byte, whatever the umask
    raw = _raw_public(key.public_key())
    atomic_write_text(public_path, f"{_PUBLIC_PREFIX}{base64.b64encode(raw).decode()}\n")
    return KeyPair(private_path, public_path, key_id(raw))


def sign_manifest(manifest: bytes, private_key: str | os.PathLike[str]) -> ManifestSignature:
    """The signature of ``manifest`` (the exact bytes of manifest.json) with the key in ``private_key``."""
    key = _load_private(Path(private_key))
    raw = _raw_public(key.public_key())
    return ManifestSignature(ALGORITHM, key_id(raw), base64.b64encode(raw).decode(),
                             base64.b64encode(key.sign(manifest)).decode())


def read_public_key(path: str | os.PathLike[str]) -> bytes:
    """The raw public key in a ``.pub`` file (``ed25519 BASE64``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CompressError(f"cannot read public key {path}: {exc}") from None
    if not text.startswith(_PUBLIC_PREFIX):
        raise CompressError(f"{path} is not a compress public key (expected a line 'ed25519 BASE64')")
    try:
        raw = base64.b64decode(text[len(_PUBLIC_PREFIX):], validate=True)
    except ValueError:
        raise CompressError(f"{path}: the key is not valid base64") from None
    if len(raw) != 32:
        raise CompressError(f"{path}: an Ed25519 public key is 32 bytes, this one {len(raw)}")
    return raw


def check_signature(manifest: bytes, signature_file: bytes, trusted: list[bytes], *,
                    what: str = "manifest.json") -> ManifestSignature:
    """The signature in ``signature_file`` over ``manifest``; CompressError unless it verifies.

    With ``trusted`` keys the signer must be one of them; without, any key that verifies will do
    (the caller then says the signer was not checked).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = json.loads(signature_file.decode("utf-8"))
        signature = ManifestSignature(**{k: str(data[k]) for k in ("algorithm", "key_id", "public_key", "signature")})
        raw_key = base64.b64decode(signature.public_key, validate=True)
        raw_signature = base64.b64decode(signature.signature, validate=True)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
        raise CompressError(f"{SIGNATURE_FILE} is not a readable signature") from None
    if signature.algorithm != ALGORITHM or len(raw_key) != 32:
        raise CompressError(f"{SIGNATURE_FILE}: unsupported signature {signature.algorithm!r}")
    if signature.key_id != key_id(raw_key):
        raise CompressError(f"{SIGNATURE_FILE}: the key id does not belong to the key it carries")
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(raw_signature, manifest)
    except InvalidSignature:
        raise CompressError(f"the signature does not match {what}: it was changed after signing") from None
    if trusted and raw_key not in trusted:
        raise CompressError(f"signed by key {signature.key_id}, which is not among the trusted keys "
                            f"({', '.join(key_id(k) for k in trusted)})")
    return signature


REPORT_SIGNATURE = "signature"


def _canonical(report: dict[str, object]) -> bytes:
    body = {key: value for key, value in report.items() if key != REPORT_SIGNATURE}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def sign_report(report: dict[str, object], private_key: str | os.PathLike[str]) -> dict[str, object]:
    """``report`` (a bench report as JSON) with a ``signature`` over all its other fields.

    Made where the report is measured (``compress bench --sign KEY`` on the board), it turns the
    report's host, numbers and model hash from a claim into evidence for ``gate --trust``.
    """
    key = _load_private(Path(private_key))
    raw = _raw_public(key.public_key())
    signature = ManifestSignature(ALGORITHM, key_id(raw), base64.b64encode(raw).decode(),
                                  base64.b64encode(key.sign(_canonical(report))).decode())
    return {**report, REPORT_SIGNATURE: asdict(signature)}


def check_report_signature(report: dict[str, object], trusted: list[bytes]) -> str:
    """The key id that signed ``report``; CompressError unless one of ``trusted`` did, over these exact fields."""
    signed = report.get(REPORT_SIGNATURE)
    if not isinstance(signed, dict):
        raise CompressError("the bench report is unsigned, and --trust asks for a report signed by a trusted key "
                            "(sign it where it is measured: compress bench --sign KEY)")
    return check_signature(_canonical(report), json.dumps(signed).encode("utf-8"), trusted,
                           what="the bench report").key_id


def _load_private(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise CompressError(f"signing key not found: {path}") from None
    except (ValueError, TypeError, OSError):
        raise CompressError(f"{path} is not an unencrypted PEM private key (make one with `compress keys new`)") \
            from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CompressError(f"{path} is not an Ed25519 key (make one with `compress keys new`)")
    return key


def _raw_public(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
