"""Atomic writes: a reader sees the old file or folder or the new one, never half of either.

The one place temporary and staging paths are made (:func:`staging_folder`, :func:`as_atomic`,
:func:`as_atomic_folder`); the cache's staging and an export's OUTPUT use them too. They follow
dvc-objects' ``as_atomic``: the new content is written under a temporary
name in the target's own folder (so the final rename stays on one file system and is atomic),
unique per process and thread (so concurrent writers never share one), and removed on any
exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _temporary_name(path: Path, role: str) -> Path:
    # Hidden, so that a walk of the folder (a wheel's file list, a DVC out) never ships it, and
    # recognisable, so that what a killed process left can be found (``.<name>.hatch-onnx-*``).
    return path.with_name(f".{path.name}.hatch-onnx-{role}-{os.getpid()}-{threading.get_ident()}")


def remove_tree(path: Path) -> None:
    """``shutil.rmtree`` that also removes read-only files (cache entries are; Windows refuses them)."""

    def retry_writable(function: Any, failed: str, _error: Any) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(failed, 0o700)
            function(failed)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry_writable)
    else:
        shutil.rmtree(path, onerror=retry_writable)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def staging_folder(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A new, uniquely named folder in ``parent`` (same file system: renames out of it are atomic).

    Removed on exit with whatever is left in it: a caller moves out what it keeps. ``prefix``
    makes what a killed process left recognisable (hidden, ``.``, where a user's folder holds it).
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield folder
    finally:
        if folder.exists():
            remove_tree(folder)


@contextlib.contextmanager
def as_atomic(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with as_atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented, key-sorted JSON (stable bytes for the same data)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def swap_folder(staging: Path, target: Path) -> None:
    """Put the folder ``staging`` at ``target``, replacing whatever folder is there.

    Two renames: the old folder out of the way, the new one in. If the second fails, the old
    folder is put back and the error raised: ``target`` is never left missing by a failure.
    """
    old = _temporary_name(target, "old")
    had_old = target.exists()
    if had_old:
        target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if had_old:
            old.rename(target)
        raise
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def as_atomic_folder(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it replaces ``target`` (:func:`swap_folder`)."""
    target = Path(target)
    staging = _temporary_name(target, "staging")
    _remove(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        swap_folder(staging, target)
    finally:
        _remove(staging)
