"""The toolchain of an interpreter: the versions that enter a job's cache key.

A cache key holds the versions of what produced the export (never found by importing:
``importlib.metadata`` reads the installed distributions' metadata). Exports may run in
another interpreter than the build's own (a Hatch build environment has no torch; TensorFlow
jobs may run in a transformers-4 interpreter of their own), so versions are read from the
interpreter that runs the job.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from typing import Optional

from hatch_onnx.__about__ import __version__

# Who runs the jobs of each framework when no option names it (see hatch_onnx.build).
PYTHON_ENV = "HATCH_ONNX_PYTHON"
PYTHON_TF_ENV = "HATCH_ONNX_PYTHON_TF"

# Distributions whose versions enter a job's key, by framework: only those the job uses.
FRAMEWORK_PACKAGES: Mapping[str, tuple[str, ...]] = {
    "pt": ("torch", "transformers", "onnx", "onnxruntime"),
    "tf": ("tensorflow", "tf-keras", "tf2onnx", "transformers", "onnx", "onnxruntime"),
}
EXPORTER_PACKAGES: Mapping[str, tuple[str, ...]] = {"dynamo": ("onnxscript",), "genai": ("onnxruntime-genai",)}
PACKAGES = tuple(sorted({name for names in (*FRAMEWORK_PACKAGES.values(), *EXPORTER_PACKAGES.values()) for name in names}))

Versions = Mapping[str, Optional[str]]

# What another interpreter runs to report its versions: the standard library only, isolated
# (-I) so that the build's PYTHONPATH cannot lend it packages it does not have.
_PROBE = (
    "import importlib.metadata as m, json, sys\n"
    "def v(n):\n"
    "    try: return m.version(n)\n"
    "    except m.PackageNotFoundError: return None\n"
    "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'versions': {n: v(n) for n in sys.argv[1:]}}))\n"
)


def installed_versions() -> dict[str, Optional[str]]:
    """This interpreter's toolchain, read in-process."""
    from importlib import metadata

    versions: dict[str, Optional[str]] = {}
    for name in PACKAGES:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
            continue
        # The Version header is near the top of METADATA; ``dist.version`` would parse the
        # whole file with the email parser, the slowest step of a fully cached build.
        head = (dist.read_text("METADATA") or "").split("\n\n", 1)[0]
        found = re.search(r"^Version:\s*(\S+)", head, re.MULTILINE)
        versions[name] = found.group(1) if found else dist.version
    return _with_runtime(versions, "%d.%d" % sys.version_info[:2])


def interpreter_versions(python: Optional[str]) -> dict[str, Optional[str]]:
    """The toolchain of ``python`` (``None``: this interpreter, read in-process)."""
    if python is None:
        return installed_versions()
    try:
        probe = subprocess.run([python, "-I", "-c", _PROBE, *PACKAGES], capture_output=True, text=True, timeout=120, check=True)
        found = json.loads(probe.stdout.strip().splitlines()[-1])
        return _with_runtime(found["versions"], found["python"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError) as exc:
        from hatch_onnx.errors import FrameworkError

        raise FrameworkError(f"{python}: cannot run it to read its toolchain ({exc})") from None


def _with_runtime(versions: dict[str, Optional[str]], python: str) -> dict[str, Optional[str]]:
    # hatch-onnx is the code that runs the job: the worker imports this very package, whatever
    # the worker interpreter has installed.
    return {"hatch-onnx": __version__, "python": python, **versions}


def job_versions(versions: Versions, framework: str, exporter: str) -> dict[str, Optional[str]]:
    """The part of ``versions`` a job's key holds: what its framework and exporter use."""
    wanted = ("hatch-onnx", "python", *FRAMEWORK_PACKAGES[framework], *EXPORTER_PACKAGES.get(exporter, ()))
    return {name: versions.get(name) for name in wanted}


def transformers_major(version: Optional[str] = None) -> Optional[int]:
    """The major version of ``version``, or of this interpreter's transformers; None when absent.

    The one place the transformers line is read: 4 (4.57, the last line with TensorFlow) or 5.
    """
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            version = installed("transformers")
        except PackageNotFoundError:
            return None
    try:
        return int(version.split(".")[0])
    except ValueError:
        return None


def runs_tensorflow(versions: Versions) -> bool:
    """Whether an interpreter with these versions can run TensorFlow jobs (transformers 5 dropped TF)."""
    major = transformers_major(versions.get("transformers") or "")
    return bool(versions.get("tensorflow")) and major is not None and major < 5
