"""The ``onnx`` build hook: params.yaml's models, exported through the cache, shipped in the wheel.

```toml
[build-system]
requires = ["hatchling", "hatch-onnx"]
build-backend = "hatchling.build"

[tool.hatch.build.hooks.onnx]
params = "params.yaml"            # default
destination = "our_models/onnx"   # where the models go inside the wheel
```
For the ``wheel`` and ``sdist`` targets, :meth:`OnnxBuildHook.initialize` runs the same plan and
cache as ``hatch-onnx build`` into the hook's folder (see :mod:`hatch_onnx.hatch.folder`) and
force-includes its files; the wheel stays pure Python. A wheel built from an sdist reuses the
models the sdist carries. Options are read lazily, as hatchling's own hooks do, and every error
names the option and the hook.
"""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# PyPI refuses larger uploads unless the project asks for more; past 4 GiB a zip needs Zip64,
# which some older installers and zip tools cannot read.
PYPI_FILE_LIMIT = 100 * 1024**2
ZIP64_LIMIT = 0xFFFFFFFF


def _megabytes(size: int) -> str:
    return f"{size / 1024**2:,.0f} MB"


def size_warnings(files: list[Path], root: Path) -> list[str]:
    """Warnings for the files about to be shipped (before the archive is written)."""
    warnings = []
    for file in files:
        size = file.stat().st_size
        if size > PYPI_FILE_LIMIT:
            warnings.append(f"{file.relative_to(root)} is {_megabytes(size)}: a wheel holding it exceeds PyPI's default "
                            f"upload limit of {_megabytes(PYPI_FILE_LIMIT)} (ask PyPI for a larger limit, or host the wheel elsewhere)")
    total = sum(file.stat().st_size for file in files)
    if total > ZIP64_LIMIT:
        warnings.append(f"the models add {_megabytes(total)}: past 4 GB the archive needs Zip64, which some installers cannot read")
    return warnings


def artifact_warnings(artifact: Path) -> list[str]:
    """Warnings for the archive written."""
    size = artifact.stat().st_size
    warnings = []
    if size > PYPI_FILE_LIMIT:
        warnings.append(f"{artifact.name} is {_megabytes(size)}, over PyPI's default upload limit of {_megabytes(PYPI_FILE_LIMIT)}")
    if size > ZIP64_LIMIT:
        warnings.append(f"{artifact.name} is over 4 GB and uses Zip64, which some installers cannot read")
    return warnings


class OnnxBuildHook(BuildHookInterface):
    PLUGIN_NAME = "onnx"
    # Keys of the same table that hatchling itself reads; accepted and left to it.
    HATCHLING_OPTIONS = frozenset({"dependencies", "require-runtime-dependencies", "require-runtime-features", "enable-by-default"})
    OPTIONS = ("params", "destination", "python", "python-tf", "jobs", "layout")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__config_params: Optional[str] = None
        self.__config_destination: Optional[str] = None
        self.__config_python: Optional[str] = None
        self.__config_python_tf: Optional[str] = None
        self.__config_jobs: Optional[int] = None
        self.__config_layout: Optional[tuple[str, ...]] = None
        self.__source_path: Optional[str] = None

    # --- options ------------------------------------------------------------------------

    def check_options(self) -> None:
        """Reject unknown keys (a typo would otherwise be ignored), then read every option."""
        unknown = sorted(set(self.config) - set(self.OPTIONS) - self.HATCHLING_OPTIONS)
        if unknown:
            message = f"Unknown option `{unknown[0]}` for build hook `{self.PLUGIN_NAME}` (options: {', '.join(self.OPTIONS)})"
            raise ValueError(message)
        _ = self.config_params, self.config_destination, self.config_python, self.config_python_tf, self.config_jobs, self.config_layout

    @property
    def config_params(self) -> str:
        if self.__config_params is None:
            params = self.config.get("params", "params.yaml")
            if not isinstance(params, str):
                message = f"Option `params` for build hook `{self.PLUGIN_NAME}` must be a string"
                raise TypeError(message)
            if not params:
                message = f"Option `params` for build hook `{self.PLUGIN_NAME}` cannot be an empty string"
                raise ValueError(message)
            self.__config_params = params
        return self.__config_params

    @property
    def config_destination(self) -> str:
        if self.__config_destination is None:
            destination = self.config.get("destination")
            if destination is None:
                from hatch_onnx.hatch.folder import package_name

                # The project's own package, by hatchling's naming rule: `our-models` -> `our_models/onnx`.
                destination = f"{package_name(self.metadata.core.name)}/onnx"
            if not isinstance(destination, str):
                message = f"Option `destination` for build hook `{self.PLUGIN_NAME}` must be a string"
                raise TypeError(message)
            path = PurePosixPath(destination.replace("\\", "/"))
            if not destination or path.is_absolute() or ".." in path.parts or str(path) == ".":
                message = (f"Option `destination` for build hook `{self.PLUGIN_NAME}` must be a relative path inside "
                           f"the wheel, such as `our_models/onnx`, not `{destination}`")
                raise ValueError(message)
            self.__config_destination = str(path)
        return self.__config_destination

    @property
    def config_python(self) -> str:
        """The interpreter for exports; empty means: found as described in :mod:`.interpreter`."""
        if self.__config_python is None:
            python = self.config.get("python", "")
            if not isinstance(python, str):
                message = f"Option `python` for build hook `{self.PLUGIN_NAME}` must be a string"
                raise TypeError(message)
            self.__config_python = python
        return self.__config_python

    @property
    def config_python_tf(self) -> str:
        """The interpreter for TensorFlow jobs (transformers 4 with hatch-onnx[tf]); empty: ``$HATCH_ONNX_PYTHON_TF``, else ``python``'s."""
        if self.__config_python_tf is None:
            python_tf = self.config.get("python-tf", "")
            if not isinstance(python_tf, str):
                message = f"Option `python-tf` for build hook `{self.PLUGIN_NAME}` must be a string"
                raise TypeError(message)
            self.__config_python_tf = python_tf
        return self.__config_python_tf

    @property
    def config_jobs(self) -> int:
        if self.__config_jobs is None:
            jobs = self.config.get("jobs", 1)
            if not isinstance(jobs, int) or isinstance(jobs, bool):
                message = f"Option `jobs` for build hook `{self.PLUGIN_NAME}` must be an integer"
                raise TypeError(message)
            if jobs < 1:
                message = f"Option `jobs` for build hook `{self.PLUGIN_NAME}` must be at least 1"
                raise ValueError(message)
            self.__config_jobs = jobs
        return self.__config_jobs

    @property
    def config_layout(self) -> Optional[tuple[str, ...]]:
        """`optimum`, `transformers.js` or a list of both; empty: params.yaml's `onnx.layout`."""
        if self.__config_layout is None:
            from hatch_onnx.layouts import LAYOUTS, as_layouts

            layout = self.config.get("layout", "")
            if not isinstance(layout, (str, list)) or not all(isinstance(name, str) for name in ([layout] if isinstance(layout, str) else layout)):
                message = f"Option `layout` for build hook `{self.PLUGIN_NAME}` must be a string or an array of strings"
                raise TypeError(message)
            try:
                self.__config_layout = as_layouts(layout) if layout else ()
            except ValueError:
                message = f"Option `layout` for build hook `{self.PLUGIN_NAME}` must name layouts among: {', '.join(LAYOUTS)}"
                raise ValueError(message) from None
        return self.__config_layout or None

    # --- where the models live ----------------------------------------------------------

    @property
    def source_path(self) -> str:
        """The destination's path in the project tree (`our_models/onnx` -> `src/our_models/onnx`)."""
        if self.__source_path is None:
            destination = self.config_destination
            candidates = [f"{source}{destination[len(target):]}" for source, target in self._wheel_sources().items()
                          if source and destination.startswith(target)]
            candidates.append(destination)
            # The first whose package folder exists; a new top-level folder otherwise.
            existing = [c for c in candidates if Path(self.root, c).parent.is_dir()]
            self.__source_path = (existing or candidates)[0].rstrip("/")
        return self.__source_path

    def _wheel_sources(self) -> dict[str, str]:
        """The wheel target's source rewrites (``src/`` -> ``""``), whichever target is building."""
        try:
            config = self.build_config
            if self.target_name != "wheel":
                from hatchling.builders.wheel import WheelBuilder

                config = WheelBuilder(self.root, plugin_manager=self.build_config.builder.plugin_manager,
                                      metadata=self.metadata, app=self.app).config
            return {source.replace(os.sep, "/"): target.replace(os.sep, "/") for source, target in config.sources.items()}
        except Exception:  # noqa: BLE001 - a layout hatchling cannot read fails the wheel build, with hatchling's message
            return {}

    @property
    def folder(self):  # -> ModelsFolder
        from hatch_onnx.hatch.folder import ModelsFolder

        return ModelsFolder(Path(self.root, self.source_path))

    # --- the build ----------------------------------------------------------------------

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name not in {"wheel", "sdist"}:
            self.app.display_warning(f"Build hook `{self.PLUGIN_NAME}` ships models in wheels and sdists only; "
                                     f"skipped for target `{self.target_name}`")
            return
        self.check_options()
        folder = self.folder
        started = time.perf_counter()
        if Path(self.root, "PKG-INFO").is_file() and folder.manifest() is not None:
            # Building from an sdist (hatchling's own test): reuse the models it carries.
            manifest = folder.verify_shipped(self.metadata.version, self._planned())
            count = sum(len(features) for features in manifest["models"].values())
            self.app.display_info(f"onnx: {count} model(s) from the sdist, checked against its manifest")
        else:
            self._export(folder)
            if self.target_name == "sdist":
                self._warn_if_sdist_ships_the_cache()
        self.app.display_debug(f"onnx: models ready in {time.perf_counter() - started:.2f} s")

        files = folder.files()
        for warning in size_warnings(files, Path(self.root)):
            self.app.display_warning(f"onnx: {warning}")
        if version == "editable":
            # The editable install imports the package from the tree, where the models already are.
            self.app.display_info(f"onnx: editable install: models are read from {self.source_path}/")
            return
        prefix = self.config_destination if self.target_name == "wheel" else self.source_path
        for file in files:
            build_data["force_include"][str(file)] = f"{prefix}/{file.relative_to(folder.path).as_posix()}"
        if self.target_name == "wheel" and not build_data.get("tag"):
            # Pure Python either way; without requires-python hatchling would say py2.py3, and the
            # loader shipped beside the models is Python 3 only.
            build_data["tag"] = "py3-none-any"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self.target_name in {"wheel", "sdist"} and version != "editable":
            for warning in artifact_warnings(Path(artifact_path)):
                self.app.display_warning(f"onnx: {warning}")

    def clean(self, versions: list[str]) -> None:
        if self.folder.remove():
            self.app.display_info(f"onnx: removed {self.source_path}/")

    # --- steps ----------------------------------------------------------------------------

    def _params_file(self) -> Path:
        path = Path(self.root, self.config_params)
        if not path.is_file():
            message = f"Option `params` for build hook `{self.PLUGIN_NAME}`: `{self.config_params}` not found in {self.root}"
            raise FileNotFoundError(message)
        return path

    def _params(self) -> Any:
        """params.yaml's schema alone: checkpoints are checked by the build, and an sdist may not carry them."""
        from hatch_onnx.params import read_params

        return read_params(self._params_file()).params

    def _planned(self) -> set[tuple[str, str]]:
        return {(name, feature) for name, model in self._params().onnx.models.items() for feature in model.features}

    def _warn_if_sdist_ships_the_cache(self) -> None:
        """A cache inside the project, not ignored, would go into the sdist whole (entries, locks, state)."""
        from hatch_onnx.params import read_params

        cache = read_params(self._params_file()).cache_root  # the raw value: no schema (pydantic) for a warning
        try:
            relative = cache.resolve().relative_to(Path(self.root).resolve()).as_posix()
        except ValueError:
            return
        if self.build_config.include_path(f"{relative}/state/stat.db"):
            self.app.display_warning(f"onnx: the cache `{relative}/` is inside the project and the sdist would carry it: "
                                     f"add it to .gitignore or to [tool.hatch.build.targets.sdist] exclude")

    def _export(self, folder) -> None:
        from hatch_onnx.errors import NotCachedError
        from hatch_onnx.hatch.folder import toolchain_of_record
        from hatch_onnx.hatch.interpreter import PYTHON_ENV, find_export_python, frontend_free_environ

        params_file = self._params_file()
        chosen = find_export_python(self.config_python, Path(self.root))
        version = self.metadata.version
        if chosen.python is None:
            # No interpreter can export, and none can say which toolchain the cache keys are for:
            # serve the plan from the cache with the toolchain that made the current models.
            versions = toolchain_of_record(folder.manifest())
            try:
                if versions is None:
                    raise NotCachedError(["every job"])
                folder.build(params_file, version=version, versions=versions, layouts=self.config_layout)
            except NotCachedError as exc:
                message = (
                    f"Build hook `{self.PLUGIN_NAME}`: {', '.join(exc.missing)} must be exported, and no Python with the ML "
                    f"frameworks was found (tried: {', '.join(chosen.tried) or 'none'}). Activate the virtual environment "
                    f"that has torch or tensorflow (e.g. `. .venv/bin/activate`) before building, or name its interpreter "
                    f"with option `python` in [tool.hatch.build.hooks.{self.PLUGIN_NAME}] or the variable ${PYTHON_ENV}"
                )
                raise RuntimeError(message) from None
            self.app.display_info("onnx: every model came from the cache (no interpreter with torch or tensorflow found; "
                                  "keys use the toolchain of the previous build)")
            return

        result = folder.build(params_file, version=version, python=chosen.python, python_tf=self._python_tf(),
                              jobs=self.config_jobs, environ=frontend_free_environ(os.environ), layouts=self.config_layout)
        hits = len(result.results) - result.exported
        self.app.display_info(f"onnx: {len(result.results)} model(s): {result.exported} exported, {hits} from the cache "
                              f"(exports run by {chosen.python}, from {chosen.source})")

    def _python_tf(self) -> Optional[str]:
        """Option `python-tf` as a path (relative to the project) or a command; ``None`` leaves it to the build."""
        value = self.config_python_tf
        if not value:
            return None
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else Path(self.root, path)) if os.sep in value else value
