"""Ed25519 signatures over what hatch-onnx shares: remote cache entries and released manifests.

Keys are files, made with any tool that writes PEM (``openssl genpkey -algorithm ed25519``):

- the **signing key**, a private key (PEM, PKCS#8, unencrypted), only on the machines that
  publish (CI): ``$HATCH_ONNX_SIGNING_KEY``, else ``onnx.signing_key``;
- the **trusted keys**, public keys (PEM, SubjectPublicKeyInfo), on every machine that reads:
  ``$HATCH_ONNX_TRUSTED_KEYS`` (paths separated by ``os.pathsep``), else ``onnx.trusted_keys``.
  The signing key's own public key is always trusted.

A key is named by its *id*, the first 16 hex digits of the SHA-256 of its 32 raw public bytes:
warnings and ``hatch-onnx verify`` print it, and a signature records the id of its key.

What is signed is a canonical byte string (sorted keys, no spaces, ASCII) after a line naming
its kind, so that a signature over one kind of document can never pass for another:

- a cache entry: its key, its files' sizes and digests and its key inputs. Not ``created`` or
  the timings, which differ between two exports of one key: two machines that upload the same
  key sign the same payload, and interleaved uploads still verify;
- a manifest: its exact bytes (``manifest.json.sig`` beside it, a detached signature).

Without any key the remote is trusted as a whole, as it always was: whoever can write to the
bucket decides what a build ships. With keys, an entry that is unsigned, signed by an unknown
key or signed over other content is refused, and the job is exported again.

``cryptography`` is imported only when a key is configured.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable, Optional

from hatch_onnx.errors import BadInputError

SIGNING_KEY_ENV = "HATCH_ONNX_SIGNING_KEY"
TRUSTED_KEYS_ENV = "HATCH_ONNX_TRUSTED_KEYS"
ALGORITHM = "ed25519"
SIGNATURE_SUFFIX = ".sig"  # manifest.json -> manifest.json.sig

_ENTRY_KIND = b"hatch-onnx cache entry v1\n"
_MANIFEST_KIND = b"hatch-onnx manifest v1\n"


def canonical(data: Any) -> bytes:
    """``data`` as one canonical JSON byte string (what two machines always write alike)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def entry_payload(key: str, files: Mapping[str, tuple[int, str]], inputs: Mapping[str, Any]) -> bytes:
    """What an entry's signature covers: its key, files (size, xxh3_128) and key inputs."""
    listed = {name: {"size": size, "xxh3_128": digest} for name, (size, digest) in files.items()}
    return _ENTRY_KIND + canonical({"key": key, "files": listed, "inputs": dict(inputs)})


def manifest_payload(manifest_bytes: bytes) -> bytes:
    return _MANIFEST_KIND + manifest_bytes


def key_id(public_bytes: bytes) -> str:
    return hashlib.sha256(public_bytes).hexdigest()[:16]


class Signer:
    """A loaded private key: signs payloads as ``{"algorithm", "key", "signature"}`` records."""

    def __init__(self, path: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = _load_key(Path(path), "signing key", "an unencrypted PEM private key", Ed25519PrivateKey,
                        lambda data: serialization.load_pem_private_key(data, password=None))
        self.path = Path(path)
        self._key = key
        self.public = _raw_public(key.public_key())
        self.id = key_id(self.public)

    def sign(self, payload: bytes) -> dict[str, str]:
        return {"algorithm": ALGORITHM, "key": self.id, "signature": base64.b64encode(self._key.sign(payload)).decode("ascii")}


class Verifier:
    """Trusted public keys, by id: checks ``{"algorithm", "key", "signature"}`` records."""

    def __init__(self, paths: Iterable[Path], signer: Optional[Signer] = None) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self._keys: dict[str, Any] = {}
        for path in paths:
            public = _load_public(Path(path))
            self._keys[key_id(_raw_public(public))] = public
        if signer is not None:
            self._keys[signer.id] = Ed25519PublicKey.from_public_bytes(signer.public)

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def problem(self, payload: bytes, record: Any) -> Optional[str]:
        """Why ``record`` is not a valid signature of ``payload`` by a trusted key; ``None`` when it is."""
        from cryptography.exceptions import InvalidSignature

        if not isinstance(record, Mapping):
            return "unsigned"
        named = record.get("key")
        if record.get("algorithm") != ALGORITHM or not isinstance(named, str) or not isinstance(record.get("signature"), str):
            return "its signature record is malformed"
        public = self._keys.get(named)
        if public is None:
            return f"signed by key {named}, which is not trusted (trusted: {', '.join(self.ids)})"
        try:
            public.verify(base64.b64decode(record["signature"], validate=True), payload)
        except (InvalidSignature, ValueError):
            return f"its signature by key {named} does not match its content (tampered)"
        return None


@dataclasses.dataclass(frozen=True)
class Keys:
    """The key files a build uses; empty when signing is not set up (then nothing is signed or checked)."""

    signing: Optional[Path] = None
    trusted: tuple[Path, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.signing is not None or bool(self.trusted)

    def load(self) -> tuple[Optional[Signer], Optional[Verifier]]:
        """The signer (a machine that publishes) and verifier (any machine with a key); ``BadInputError`` naming a bad file."""
        if not self.enabled:
            return None, None
        signer = Signer(self.signing) if self.signing is not None else None
        return signer, Verifier(self.trusted, signer)


def resolve_keys(onnx: Any, base: Path, environ: Optional[Mapping[str, str]] = None) -> Keys:
    """The keys configured by the environment, else by params.yaml's ``onnx`` section (paths relative to ``base``).

    Malformed values (not a string, not a list of strings) are left to the schema check.
    """
    environ = os.environ if environ is None else environ
    onnx = onnx if isinstance(onnx, Mapping) else {}
    signing = environ.get(SIGNING_KEY_ENV) or onnx.get("signing_key")
    trusted: Any = environ.get(TRUSTED_KEYS_ENV)
    trusted = [p for p in trusted.split(os.pathsep) if p] if trusted else onnx.get("trusted_keys") or []
    if not isinstance(trusted, list) or not all(isinstance(p, str) for p in trusted):
        trusted = []
    return Keys(base / signing if isinstance(signing, str) and signing else None, tuple(base / p for p in trusted))


def sign_manifest(manifest: Path, signer: Signer) -> Path:
    """Write ``manifest``'s detached signature beside it; its path."""
    from hatch_onnx.atomic import write_text

    record = {**signer.sign(manifest_payload(manifest.read_bytes())), "signed": manifest.name}
    target = manifest.with_name(manifest.name + SIGNATURE_SUFFIX)
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    if not target.is_file() or target.read_text(encoding="utf-8") != text:  # Ed25519 is deterministic: same manifest, same bytes
        write_text(target, text)
    return target


def _load_public(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return _load_key(path, "trusted key", "a PEM public key", Ed25519PublicKey, serialization.load_pem_public_key)


def _load_key(path: Path, role: str, form: str, expected: type, load: Any) -> Any:
    """The Ed25519 key in ``path``, loaded by ``load``; :class:`BadInputError` naming ``role`` and the file otherwise."""
    try:
        key = load(path.read_bytes())
    except OSError as exc:
        raise BadInputError(f"{role} {path}: unreadable ({exc.strerror or exc})") from None
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"{role} {path}: not {form} ({_first_line(exc)})") from None
    if not isinstance(key, expected):
        raise BadInputError(f"{role} {path}: a {type(key).__name__.replace('_', '')}, not an Ed25519 key")
    return key


def _raw_public(public: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
