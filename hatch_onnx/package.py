"""The artifact layout and its manifest.

```
<out>/manifest.json
<out>/<name>/<feature>/model.onnx        (+ model.onnx.data)
                      /config.json       the checkpoint's, so that each folder is self-contained
                      /tokenizer.json ...  and its preprocessor files
```
Each ``<out>/<name>`` folder is replaced whole, by renames: a reader never sees half a model.
Graph files are hard links into the cache where the file system allows (they are read-only
there), copies otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from hatch_onnx.__about__ import __version__
from hatch_onnx.atomic import as_atomic_folder, write_json, write_text

MANIFEST = "manifest.json"
# What inference needs beside the graph: the model config and the preprocessor's files.
CHECKPOINT_SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "spm.model", "preprocessor_config.json", "processor_config.json", "feature_extractor_config.json",
    "image_processor_config.json", "normalizer.json",
)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def manifest_entry(result: Any, checkpoint_fingerprint: str, folder: str) -> dict:
    entry = result.entry
    report = result.report
    validation = report["validation"]
    graph_files = {name: {"path": f"{folder}/{name}", "size": size, "xxh3_128": digest}
                   for name, (size, digest) in sorted(entry.files.items()) if name != "report.json"}
    return {
        "files": graph_files,
        "opset": report["opset"],
        "inputs": validation["graph"]["inputs"],
        "outputs": validation["graph"]["outputs"],
        "validation": {
            "atol": validation["atol"],
            "max_abs_diff": {name: o["max_abs_diff"] for name, o in validation["outputs"].items()},
            "input_shapes": validation["inputs"],
        },
        "source": {
            "model_type": report["model_type"],
            "framework": report["framework"],
            "exporter": report["exporter"],
            "checkpoint_fingerprint": checkpoint_fingerprint,
            "new_head_weights": report["new_head_weights"],
        },
        "toolchain": dict(entry.inputs.get("versions", {})),  # of the interpreter that ran the export
        "cache_key": entry.key,
    }


def materialize(out: Path, results: Iterable[Any], prints: Mapping[Path, str], package_version: Optional[str] = None) -> dict:
    """Write every model folder of ``results`` into ``out`` and (re)write ``out/manifest.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_model: dict[str, list] = {}
    for result in results:
        by_model.setdefault(result.job.name, []).append(result)

    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    models = {name: data for name, data in manifest.get("models", {}).items() if (out / name).is_dir()}

    for name, model_results in by_model.items():
        entries = {r.job.feature: manifest_entry(r, prints[r.job.checkpoint], f"{name}/{r.job.feature}")
                   for r in model_results}
        if models.get(name) == entries and _intact(out, entries):
            continue  # already materialised from the same cache entries: nothing to rewrite
        with as_atomic_folder(out / name) as staging:
            for result in model_results:
                folder = staging / result.job.feature
                folder.mkdir(parents=True)
                for file_name in result.entry.files:
                    if file_name != "report.json":
                        _link_or_copy(result.entry.path / file_name, folder / file_name)
                for side in CHECKPOINT_SIDE_FILES:
                    if (result.job.checkpoint / side).is_file():
                        shutil.copyfile(result.job.checkpoint / side, folder / side)
        models[name] = entries

    manifest = {"format": 1, "version": package_version, "hatch_onnx": __version__, "models": dict(sorted(models.items()))}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if not manifest_path.is_file() or manifest_path.read_text(encoding="utf-8") != text:
        write_text(manifest_path, text)
    return manifest


def _intact(out: Path, entries: Mapping[str, dict]) -> bool:
    """Every graph file the entries list is in place with its size (a stat each, no reading)."""
    for entry in entries.values():
        for data in entry["files"].values():
            try:
                if (out / data["path"]).stat().st_size != data["size"]:
                    return False
            except OSError:
                return False
    return True


def write_validation_figures(results: Iterable[Any], metrics: Optional[Path] = None, plots: Optional[Path] = None) -> None:
    """Validation figures for DVC: ``metrics`` as nested numbers, ``plots`` as one record per output."""
    results = list(results)
    several_models = len({r.job.name for r in results}) > 1
    nested: dict = {}
    records: list = []
    for result in results:
        for output, figures in result.report["validation"]["outputs"].items():
            key = result.job.label if several_models else result.job.feature
            nested.setdefault(key, {})[output] = {"max_abs_diff": figures["max_abs_diff"], "atol": figures["atol"]}
            records.append({"job": result.job.label, "output": f"{result.job.feature}/{output}",
                            "max_abs_diff": figures["max_abs_diff"], "atol": figures["atol"]})
    for path, data in ((metrics, nested), (plots, records)):
        if path is not None:
            write_json(path, data)
