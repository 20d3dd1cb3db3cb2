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


def variant_entry(result: Any, folder: str) -> dict:
    """A variant's manifest entry: its file (``model.<variant>.onnx``), settings and validation figures."""
    report = result.report
    size, digest = result.entry.files["model.onnx"]
    name = f"model.{result.variant}.onnx"
    return {
        "files": {name: {"path": f"{folder}/{name}", "size": size, "xxh3_128": digest}},
        "settings": report["settings"],
        "size_ratio": round(size / report["source_size"], 4),
        "validation": report["validation"]["outputs"],
        "toolchain": dict(result.entry.inputs.get("versions", {})),
        "cache_key": result.entry.key,
    }


def all_files(entry: Mapping[str, Any]) -> list[dict]:
    """Every file a feature's manifest entry ships: its graph files and its variants'."""
    files = list(entry["files"].values())
    for variant in entry.get("variants", {}).values():
        files.extend(variant["files"].values())
    return files


def materialize(out: Path, results: Iterable[Any], prints: Mapping[Path, str], package_version: Optional[str] = None,
                variants: Iterable[Any] = ()) -> dict:
    """Write every model folder of ``results`` (and their ``variants``) into ``out``; (re)write ``out/manifest.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_model: dict[str, list] = {}
    for result in results:
        by_model.setdefault(result.job.name, []).append(result)
    variants_of: dict[tuple[str, str], list] = {}
    for variant in variants:
        variants_of.setdefault((variant.job.name, variant.job.feature), []).append(variant)

    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    models = {name: data for name, data in manifest.get("models", {}).items() if (out / name).is_dir()}

    for name, model_results in by_model.items():
        entries = {r.job.feature: manifest_entry(r, prints[r.job.checkpoint], f"{name}/{r.job.feature}")
                   for r in model_results}
        for feature, entry in entries.items():
            if variants_of.get((name, feature)):
                entry["variants"] = {v.variant: variant_entry(v, f"{name}/{feature}") for v in variants_of[name, feature]}
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
                for variant in variants_of.get((name, result.job.feature), ()):
                    _link_or_copy(variant.entry.path / "model.onnx", folder / f"model.{variant.variant}.onnx")
        models[name] = entries

    manifest = {"format": 1, "version": package_version, "hatch_onnx": __version__, "models": dict(sorted(models.items()))}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if not manifest_path.is_file() or manifest_path.read_text(encoding="utf-8") != text:
        write_text(manifest_path, text)
    return manifest


def _intact(out: Path, entries: Mapping[str, dict]) -> bool:
    """Every graph file the entries list is in place with its size (a stat each, no reading)."""
    for entry in entries.values():
        for data in all_files(entry):
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
        variant = getattr(result, "variant", None)
        for output, figures in result.report["validation"]["outputs"].items():
            feature = f"{result.job.feature}.{variant}" if variant else result.job.feature
            key = f"{result.job.name}:{feature}" if several_models else feature
            # exports and o1-o3: max abs diff and atol; int8 and fp16 add their cosine and its floor
            numbers = {k: v for k, v in figures.items() if k in ("max_abs_diff", "atol", "cosine", "min_cosine")}
            nested.setdefault(key, {})[output] = numbers
            records.append({"job": f"{result.job.name}:{feature}", "output": f"{feature}/{output}", **numbers})
    for path, data in ((metrics, nested), (plots, records)):
        if path is not None:
            write_json(path, data)
