"""``hatch-onnx verify``: check shipped models against their manifest, its provenance and its signature.

What can be checked is whatever holds a hatch-onnx ``manifest.json``: a ``build --out`` folder,
an installed package (by its import name or its folder), or a wheel (read in place, never
unpacked). For each manifest found:

1. every file it lists is there, with its size and ``xxh3_128``; nothing else sits beside them
   (besides the manifest, its signature and the hook's loader), so a file slipped into a
   package is caught as surely as a changed one;
2. its provenance statement (:mod:`hatch_onnx.provenance`) names exactly those files, and each
   file's ``sha256`` is the statement's;
3. its detached signature (``manifest.json.sig``) is by a trusted key. With trusted keys given
   (``--trusted-key``, ``$HATCH_ONNX_TRUSTED_KEYS``), an unsigned manifest fails; without any,
   a signature is reported with its key id but cannot be checked.

Every problem is reported (one line each), not only the first: someone repairing a release
wants the whole list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Any, Optional

import xxhash

from hatch_onnx.errors import BadInputError
from hatch_onnx.package import MANIFEST, shipped_files
from hatch_onnx.signing import SIGNATURE_SUFFIX, Verifier, manifest_payload

SIGNATURE = MANIFEST + SIGNATURE_SUFFIX
LOADER = "__init__.py"  # the hook's copy of hatch_onnx/runtime.py
_NOT_SHIPPED_DIRS = {"__pycache__"}  # written by Python when the loader is imported


@dataclasses.dataclass
class Verdict:
    """What ``verify`` found for one manifest."""

    manifest: str  # where it is, as the user would name it
    files: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Tree:
    """The files under one manifest's folder: on disk or inside a wheel."""

    def __init__(self, label: str, files: dict[str, Any], opener) -> None:
        self.label = label  # e.g. dist/x.whl!pkg/onnx
        self._files = files  # relative posix path -> handle for the opener
        self._open = opener

    def names(self) -> list[str]:
        return sorted(self._files)

    def has(self, name: str) -> bool:
        return name in self._files

    def open(self, name: str) -> IO[bytes]:
        return self._open(self._files[name])

    def read(self, name: str) -> bytes:
        with self.open(name) as stream:
            return stream.read()

    def digests(self, name: str) -> tuple[int, str, str]:
        """Size, xxh3_128 and sha256 of one file, read once."""
        fast, slow, size = xxhash.xxh3_128(), hashlib.sha256(), 0
        with self.open(name) as stream:
            while chunk := stream.read(8 * 2**20):
                fast.update(chunk)
                slow.update(chunk)
                size += len(chunk)
        return size, fast.hexdigest(), slow.hexdigest()


def trees(target: str) -> list[_Tree]:
    """The manifests' folders of ``target``: a folder, a wheel, or an installed package's import name."""
    path = Path(target)
    if path.is_file() and zipfile.is_zipfile(path):
        return _wheel_trees(path)
    if path.is_dir():
        return _folder_trees(path)
    if path.exists():
        raise BadInputError(f"{target}: not a folder, a wheel or an installed package's name")
    if target.isidentifier():  # an import name: our_models
        import importlib.util

        try:
            spec = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if locations:
            return _folder_trees(Path(locations[0]))
    manifests = _distribution_manifests(target)  # a distribution name: our-models
    if manifests:
        return [tree for manifest in manifests for tree in _folder_trees(manifest.parent)]
    raise BadInputError(f"{target}: no such file, folder or installed package")


def _distribution_manifests(name: str) -> list[Path]:
    """The ``manifest.json`` files an installed distribution ``name`` lists in its RECORD."""
    import importlib.metadata

    try:
        files = importlib.metadata.distribution(name).files or []
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return []
    return sorted({Path(f.locate()).resolve() for f in files if f.name == MANIFEST})


def _is_manifest(data: bytes) -> bool:
    try:
        manifest = json.loads(data)
    except ValueError:
        return False
    return isinstance(manifest, dict) and "hatch_onnx" in manifest and "models" in manifest


def _folder_trees(root: Path) -> list[_Tree]:
    found = []
    for manifest in sorted(root.rglob(MANIFEST)):
        if _NOT_SHIPPED_DIRS & set(manifest.relative_to(root).parts) or not _is_manifest(manifest.read_bytes()):
            continue
        folder = manifest.parent
        files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")
                 if p.is_file() and not _NOT_SHIPPED_DIRS & set(p.relative_to(folder).parts)}
        found.append(_Tree(str(folder), files, lambda p: open(p, "rb")))
    if not found:
        raise BadInputError(f"{root}: holds no hatch-onnx {MANIFEST}")
    return found


def _wheel_trees(wheel: Path) -> list[_Tree]:
    archive = zipfile.ZipFile(wheel)
    found = []
    for info in archive.infolist():
        member = PurePosixPath(info.filename)
        if member.name != MANIFEST or not _is_manifest(archive.read(info)):
            continue
        prefix = member.parent.as_posix() + "/" if member.parent.as_posix() != "." else ""
        files = {i.filename[len(prefix):]: i for i in archive.infolist()
                 if i.filename.startswith(prefix) and not i.is_dir()
                 and not _NOT_SHIPPED_DIRS & set(PurePosixPath(i.filename).parts)}
        found.append(_Tree(f"{wheel}!{prefix.rstrip('/')}", files, archive.open))
    if not found:
        raise BadInputError(f"{wheel}: holds no hatch-onnx {MANIFEST}")
    return found


def verify(target: str, verifier: Optional[Verifier] = None) -> list[Verdict]:
    """A verdict per manifest in ``target``; :class:`BadInputError` when there is none to check."""
    return [check(tree, verifier) for tree in trees(target)]


def check(tree: _Tree, verifier: Optional[Verifier]) -> Verdict:
    verdict = Verdict(f"{tree.label}/{MANIFEST}")
    raw = tree.read(MANIFEST)
    manifest = json.loads(raw)
    listed = {record["path"]: record for record in shipped_files(manifest["models"])}
    verdict.files = len(listed)
    sha256: dict[str, str] = {}
    for name, record in listed.items():
        if not tree.has(name):
            verdict.problems.append(f"{tree.label}/{name}: missing")
            continue
        size, fast, sha256[name] = tree.digests(name)
        if size != record["size"] or fast != record["xxh3_128"]:
            verdict.problems.append(f"{tree.label}/{name}: differs from the manifest "
                                    f"({'size' if size != record['size'] else 'xxh3_128'})")
    for name in tree.names():
        if name not in listed and name not in (MANIFEST, SIGNATURE, LOADER):
            verdict.problems.append(f"{tree.label}/{name}: not listed in the manifest")
    _check_provenance(tree, manifest, listed, sha256, verdict)
    _check_signature(tree, raw, verifier, verdict)
    return verdict


def _check_provenance(tree: _Tree, manifest: dict, listed: dict, sha256: dict[str, str], verdict: Verdict) -> None:
    statement = manifest.get("provenance")
    if statement is None:
        verdict.notes.append(f"no provenance statement (manifest format {manifest.get('format')})")
        return
    subjects = {s.get("name"): s.get("digest", {}) for s in statement.get("subject", []) if isinstance(s, dict)}
    if set(subjects) != set(listed):
        verdict.problems.append(f"{tree.label}/{MANIFEST}: its provenance names other files than it lists")
        return
    for name, digest in sorted(subjects.items()):
        if digest.get("xxh3_128") != listed[name]["xxh3_128"] or (name in sha256 and digest.get("sha256") != sha256[name]):
            verdict.problems.append(f"{tree.label}/{name}: differs from the provenance statement's digest")


def _check_signature(tree: _Tree, raw: bytes, verifier: Optional[Verifier], verdict: Verdict) -> None:
    if not tree.has(SIGNATURE):
        if verifier is not None:
            verdict.problems.append(f"{tree.label}/{MANIFEST}: unsigned (no {SIGNATURE}), and trusted keys were given")
        else:
            verdict.notes.append("unsigned")
        return
    try:
        record = json.loads(tree.read(SIGNATURE))
    except ValueError:
        verdict.problems.append(f"{tree.label}/{SIGNATURE}: not JSON")
        return
    named = record.get("key") if isinstance(record, dict) else None
    if verifier is None:
        verdict.notes.append(f"signed by key {named}, not checked (no trusted key: --trusted-key or $HATCH_ONNX_TRUSTED_KEYS)")
        return
    problem = verifier.problem(manifest_payload(raw), record)
    if problem:
        verdict.problems.append(f"{tree.label}/{MANIFEST}: {problem}")
    else:
        verdict.notes.append(f"signed by trusted key {named}")
