"""The manifest's provenance: an in-toto Statement (v1) with a SLSA Provenance (v1) predicate.

- **subjects:** every file the manifest ships (graphs, variants, config and preprocessor files),
  named by its path in the output folder, with its ``sha256`` (what in-toto tooling compares)
  and ``xxh3_128`` (what the manifest and the cache use);
- **materials** (``resolvedDependencies``): each model's checkpoint fingerprint, and the
  toolchain that exported it as package URLs (``pkg:pypi/torch@2.13.0%2Bcpu``, ``pkg:generic/python@3.11``);
- **parameters** (``externalParameters``): per model and feature, the settings that decided its
  bytes and verdict (opset, dtype, exporter, tolerance, layouts, variants) and its cache key.

It is a pure function of the manifest's models and the files' bytes: no clock, no host, so two
builds of the same models write the same statement, and it is signed with the manifest
(:func:`hatch_onnx.signing.sign_manifest`). sha256 is read only for files whose xxh3 the
previous statement does not already pair with one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from hatch_onnx.__about__ import __version__

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://hatch-onnx.dev/build/v1"  # names the shape of externalParameters below
BUILDER_ID = f"pkg:pypi/hatch-onnx@{__version__}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def package_url(package: str, version: str) -> str:
    """A toolchain entry as a package URL: PyPI packages, and the interpreter as a generic one ("+" escaped, as purl wants)."""
    from urllib.parse import quote

    kind = "generic" if package == "python" else "pypi"
    return f"pkg:{kind}/{package}@{quote(str(version), safe='')}"


def statement(models: Mapping[str, Any], files: list[dict], out: Path, previous: Optional[Mapping[str, Any]] = None) -> dict:
    """The provenance statement of ``models`` (a manifest's ``models``, shipping ``files``) in ``out``."""
    known = {(s["name"], s["digest"].get("xxh3_128")): s["digest"].get("sha256")
             for s in (previous or {}).get("subject", []) if isinstance(s, Mapping) and isinstance(s.get("digest"), Mapping)}
    subjects = []
    for record in files:
        sha256 = known.get((record["path"], record["xxh3_128"])) or file_sha256(out / record["path"])
        subjects.append({"name": record["path"], "digest": {"sha256": sha256, "xxh3_128": record["xxh3_128"]}})
    parameters: dict[str, dict] = {}
    dependencies: dict[str, dict] = {}
    for name, features in sorted(models.items()):
        for feature, entry in sorted(features.items()):
            source = entry["source"]
            parameters.setdefault(name, {})[feature] = {
                "model_type": source["model_type"], "framework": source["framework"], "exporter": source["exporter"],
                "opset": entry["opset"], "dtype": entry["dtype"], "atol": entry["validation"]["atol"],
                "layouts": entry["layouts"], "cache_key": entry["cache_key"],
                "variants": {variant: data["settings"] for variant, data in sorted(entry.get("variants", {}).items())},
            }
            dependencies[f"checkpoint:{name}"] = {"name": f"checkpoint:{name}",
                                                  "digest": {"xxh3_128": source["checkpoint_fingerprint"]}}
            for package, version in sorted(entry.get("toolchain", {}).items()):
                if version:
                    uri = package_url(package, version)
                    dependencies[uri] = {"uri": uri}
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"models": parameters},
                "resolvedDependencies": [dependencies[k] for k in sorted(dependencies)],
            },
            "runDetails": {"builder": {"id": BUILDER_ID}},
        },
    }
