"""The folder of models the hook owns in the project tree.

```
<project>/src/our_models/onnx/          the source path of the wheel's `destination`
├── __init__.py                         hatch_onnx/runtime.py: `from our_models.onnx import load`
├── manifest.json                       hatch-onnx's manifest, with the package version
└── <name>/<feature>/model.onnx         (+ model.onnx.data, config.json, tokenizer files)
```
It lives where the destination's package lives in the source tree, so that one folder serves
every way of installing: the wheel force-includes it at ``destination``, the sdist carries it at
the same relative path (a wheel built from that sdist reuses it, see :meth:`verify_shipped`), and
an editable install imports it from the tree. A build replaces it whole, by renames, so it always
holds exactly the current plan; ``hatch clean`` removes it. The hook refuses to touch a folder that
it did not write (one without its manifest).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, TextIO

from hatch_onnx.atomic import as_atomic_folder
from hatch_onnx.package import MANIFEST

LOADER = "__init__.py"
# Files a walk of the folder must not ship: bytecode from an editable install's imports, OS litter.
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_FILES = {".DS_Store"}


def package_name(project_name: str) -> str:
    """The import name of a project's package, whose ``onnx`` folder is the default destination.

    For every valid project name this is hatchling's rule (runs of ``-_.`` become ``_``, lower
    case: ``our-models`` -> ``our_models``), so the folder lands in the package hatchling ships.
    Other characters (a folder name with spaces, which ``hatch-onnx init`` may start from) also
    become ``_``: the result holds letters, digits and ``_`` only, and is ``models`` if nothing is left.
    """
    return re.sub(r"[^A-Za-z0-9]+", "_", project_name).strip("_").lower() or "models"


class ModelsFolder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> Optional[dict]:
        """The folder's manifest if the folder is ours, ``None`` if there is no folder."""
        if not self.path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if "hatch_onnx" in manifest and "models" in manifest:
                return manifest
        except (OSError, ValueError):
            pass
        message = (f"Option `destination` for build hook `onnx` maps to `{self.path}`, which exists and was not written "
                   f"by hatch-onnx (no {MANIFEST} of its own): the hook replaces that folder whole, so choose one it can own")
        raise ValueError(message)

    def files(self) -> list[Path]:
        """Every file to ship, sorted (graphs with their external data, side files, manifest, loader)."""
        found = []
        for folder, dirs, names in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
            found += [Path(folder, name) for name in names if name not in _SKIPPED_FILES]
        return sorted(found)

    # --- writing --------------------------------------------------------------------------

    def build(self, params_file: Path, *, version: str, python: Optional[str] = None, python_tf: Optional[str] = None,
              jobs: int = 1, versions: Optional[Mapping[str, Mapping[str, Optional[str]]]] = None,
              progress_stream: Optional[TextIO] = None, environ: Optional[Mapping[str, str]] = None,
              layouts: Optional[tuple[str, ...]] = None) -> Any:
        """Run the build (:func:`hatch_onnx.build.run_build`) into a staging folder, add the loader, swap it in.

        With ``versions`` the build is lookup only (see ``run_build``). A failed job, or a miss of
        a lookup-only build, raises and leaves the folder as it was. ``environ`` is the build's
        environment (its workers start from it); hatchling's process keeps its own untouched.
        """
        from hatch_onnx.build import run_build
        from hatch_onnx.package import out_lock

        self.manifest()  # refuse a folder that is not ours before any work
        with out_lock(self.path), as_atomic_folder(self.path) as staging:
            result = run_build(params_file, out=staging, python=python, python_tf=python_tf, jobs=jobs,
                               package_version=version, progress_stream=progress_stream, versions=versions,
                               environ=environ, layouts=layouts, destination=self.path)
            self._write_loader(staging)
        return result

    def verify_shipped(self, version: str, planned: set[tuple[str, str]]) -> dict:
        """Check models carried by an sdist against their manifest; returns the manifest.

        A wheel built from an sdist reuses them as they are: same bytes as the sdist's author
        validated, and no export, cache or ML framework needed in the build environment.
        """
        from hatch_onnx.fingerprint import file_digest

        manifest = self.manifest() or {}
        if manifest.get("version") != version:
            raise ValueError(f"{self.manifest_path}: models built for version {manifest.get('version')}, not {version}")
        shipped = {(name, feature) for name, features in manifest["models"].items() for feature in features}
        if shipped != planned:
            raise ValueError(f"{self.manifest_path}: ships {sorted(shipped)} but params.yaml plans {sorted(planned)}")
        from hatch_onnx.package import all_files
        from hatch_onnx.signing import SIGNATURE_SUFFIX

        listed = {}
        for features in manifest["models"].values():
            for entry in features.values():
                for file in all_files(entry):
                    listed[file["path"]] = file
        for relative, file in sorted(listed.items()):
            path = self.path / relative
            if not path.is_file() or path.stat().st_size != file["size"] or file_digest(path) != file["xxh3_128"]:
                raise ValueError(f"{path}: differs from {self.manifest_path} (size or xxh3_128); the sdist is damaged")
        # Exactly the listed files (and the manifest, and the loader rewritten below): a file added
        # to the sdist's models folder would otherwise ship in the wheel.
        unlisted = sorted(p.relative_to(self.path).as_posix() for p in self.files())
        unlisted = [name for name in unlisted if name not in listed and name not in (MANIFEST, MANIFEST + SIGNATURE_SUFFIX, LOADER)]
        if unlisted:
            raise ValueError(f"{self.path}: holds files its manifest does not list ({', '.join(unlisted[:5])}); "
                             "the sdist was altered after it was built")
        self._write_loader(self.path)  # the loader is code, not a model: always this hatch-onnx's
        return manifest

    def remove(self) -> bool:
        """Remove the folder if it is ours, and what an interrupted build left beside it; whether there was one."""
        for leftover in self.path.parent.glob(f".{self.path.name}.hatch-onnx-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if self.manifest() is None:
            return False
        shutil.rmtree(self.path)
        return True

    @staticmethod
    def _write_loader(folder: Path) -> None:
        from hatch_onnx import runtime

        source = Path(runtime.__file__).read_text(encoding="utf-8")
        header = "# Written by hatch-onnx's build hook from hatch_onnx/runtime.py; rebuilt on every build.\n"
        (folder / LOADER).write_text(header + source, encoding="utf-8")


def toolchain_of_record(manifest: Optional[dict]) -> Optional[dict[str, dict[str, Optional[str]]]]:
    """Per framework, the toolchain versions that made a manifest's models (``None`` if it has none)."""
    versions: dict[str, dict[str, Optional[str]]] = {}
    for features in (manifest or {}).get("models", {}).values():
        for entry in features.values():
            versions.setdefault(entry["source"]["framework"], {}).update(entry.get("toolchain", {}))
    return versions or None
