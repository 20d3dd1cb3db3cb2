"""params.yaml, read once: the file's bytes and data, the cache folder it names, its schema on demand.

The reader is light (PyYAML with libyaml): a fully cached build plans from a memo keyed by the
file's bytes (see :mod:`hatch_onnx.plan`) and never needs the schema's pydantic models, which
:attr:`ParamsSource.params` loads from :mod:`hatch_onnx.schema` on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml

from hatch_onnx.errors import ParamsError
from hatch_onnx.signing import Keys, resolve_keys

REMOTE_ENV = "HATCH_ONNX_REMOTE"
EXECUTORS = ("local", "ray")  # onnx.executor, build --executor (the schema's Executor)

if TYPE_CHECKING:  # pragma: no cover
    from hatch_onnx.schema import ModelParams, ParamsFile


@dataclasses.dataclass(frozen=True)
class ParamsSource:
    """params.yaml as read, once: its bytes, its YAML data and the cache folder it names.

    The schema is checked on first use of :attr:`params` (pydantic is the costliest import of
    a fully cached build, whose plan comes from the memo without it). The cache location is
    known before that: ``$HATCH_ONNX_CACHE``, else ``onnx.cache``, else beside params.yaml.
    """

    file: Path  # absolute
    raw: bytes
    data: Any
    cache_root: Path
    remote: Optional[str] = None  # the cache's remote tier (an fsspec URL): $HATCH_ONNX_REMOTE, else onnx.remote
    keys: Keys = Keys()  # signing and trusted keys (see hatch_onnx.signing); none by default
    # Who exports the misses: "local" (the worker pool) or "ray". Read raw, like ``remote``: a
    # memoised plan skips the schema, which refused any other value when the memo was made.
    executor: str = "local"

    @functools.cached_property
    def params(self) -> "ParamsFile":
        """The validated schema; :class:`ParamsError` naming the first bad key."""
        from hatch_onnx.schema import parse_params

        return parse_params(self.data, str(self.file))

    def checkpoint(self, model: "ModelParams") -> Path:
        """A model's checkpoint folder: relative paths are relative to params.yaml's folder."""
        checkpoint = Path(model.checkpoint)
        return checkpoint if checkpoint.is_absolute() else self.file.parent / checkpoint


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml when built
    """YAML's safe loader, refusing a key given twice in one mapping (YAML says the last would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"key {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_params(path: str | Path, environ: Optional[Mapping[str, str]] = None) -> ParamsSource:
    """Read params.yaml; :class:`ParamsError` if it is missing or not YAML. The schema is checked lazily.

    ``environ`` (default ``os.environ``) holds the overrides ``$HATCH_ONNX_CACHE``, ``$HATCH_ONNX_REMOTE``
    and the key paths of :mod:`hatch_onnx.signing`.
    """
    environ = os.environ if environ is None else environ
    from hatch_onnx.cache import resolve_cache_root

    path = Path(path).absolute()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ParamsError(f"{path}: params file not found" if not path.exists() else f"{path}: unreadable ({exc.strerror})") from None
    try:
        data = yaml.load(raw, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    onnx = data.get("onnx") if isinstance(data, dict) else None
    configured = onnx.get("cache") if isinstance(onnx, dict) else None
    # A malformed value is reported by the schema check; the cache root never depends on it.
    cache_root = resolve_cache_root(configured if isinstance(configured, str) else None, path.parent, environ)
    remote = environ.get(REMOTE_ENV) or (onnx.get("remote") if isinstance(onnx, dict) else None)
    executor = onnx.get("executor") if isinstance(onnx, dict) else None
    return ParamsSource(path, raw, data, cache_root, remote if isinstance(remote, str) and remote else None,
                        keys=resolve_keys(onnx, path.parent, environ), executor=executor if executor in EXECUTORS else "local")
