"""The artifact layout and its manifest.

```
<out>/manifest.json
<out>/<name>/<feature>/model.onnx        (+ model.onnx.data)
                      /config.json       the checkpoint's, so that each folder is self-contained
                      /tokenizer.json ...  and its preprocessor files
```
Each ``<out>/<name>`` folder is replaced whole, by renames: a reader never sees half a model.
The manifest lists every file it ships (graphs, variants, config and preprocessor files, the
genai config) with its size, ``xxh3_128`` and role, graphs with their layout
(:mod:`hatch_onnx.layouts`: ``optimum`` as drawn above, ``transformers.js`` under ``onnx/``). A folder is left as it is only when its manifest entries are the same
and every file still has its digest (through the stat record: a stat per unchanged file).

Graph files are reflinks of the cache's files where the file system has them (``FICLONE``:
btrfs, XFS; no data copied, and a write to one side never reaches the other), copies
otherwise. Never hard links: read-only modes do not stop root, and an append to an ``--out``
graph through a hard link would corrupt the cache entry.

A lock per ``out`` folder (:func:`out_lock`) serialises builds that write into it: the
manifest is read, merged and written by one at a time, and lists every model present.

The manifest carries an in-toto provenance statement of what it ships
(:mod:`hatch_onnx.provenance`); with a signing key, ``manifest.json.sig`` beside it is its
detached Ed25519 signature (:mod:`hatch_onnx.signing`). ``hatch-onnx verify`` checks all three.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Optional

import xxhash

from hatch_onnx.__about__ import __version__
from hatch_onnx.atomic import as_atomic_folder, write_json, write_text
from hatch_onnx.checkpoints import side_files
from hatch_onnx.genai import genai_config_text
from hatch_onnx.layouts import (
    GENAI_CONFIG, GENAI_CONFIG_FILE, GRAPH, GRAPH_DATA, GRAPH_SET_MEMBER, VARIANT, graph_path, placed, primary,
    role_of_checkpoint_file, role_of_entry_file,
)

MANIFEST = "manifest.json"
# 2: every file has a role (and graphs their layout); a feature lists its layouts
# 3: a provenance statement (in-toto v1, SLSA provenance v1)
MANIFEST_FORMAT = 3


_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def clone_or_copy(source: Path, target: Path) -> None:
    """``target`` as an independent file with ``source``'s bytes: a reflink if possible, else a copy."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            import fcntl

            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            return
        except (ImportError, OSError):  # no reflinks here (ext4, tmpfs, another file system)
            pass
        shutil.copyfileobj(src, dst, 8 * 1024 * 1024)  # sendfile when it can (Linux, Python >= 3.8)


def out_lock(out: Path):
    """The lock that serialises builds writing into the folder ``out``.

    It lives in the temporary folder, named by a hash of ``out``'s absolute path: a lock file
    beside ``out`` would land in a project's source tree (the hook's folder), and from there in
    its sdist.
    """
    import tempfile

    import xxhash
    from filelock import FileLock

    name = xxhash.xxh3_64_hexdigest(str(Path(out).absolute()).encode())
    return FileLock(Path(tempfile.gettempdir()) / f"hatch-onnx-out-{name}.lock")


class Placement(NamedTuple):
    """One file of a feature folder: where it goes, what it comes from (a file or text), its role."""

    path: str  # relative to the feature folder
    role: str
    source: Optional[Path] = None  # a cache entry's or the checkpoint's file
    text: Optional[str] = None  # written by us (genai_config.json)
    layout: Optional[str] = None  # graphs and variants: the layout they are placed for
    variant: Optional[str] = None  # a variant's graph: which one


def placements(result: Any, variants: Iterable[Any] = ()) -> list[Placement]:
    """Every file of ``result``'s feature folder in its job's layouts: graphs, variants, config and preprocessor files."""
    layouts = result.job.layouts
    out = []
    for layout in layouts:
        for name in sorted(result.entry.files):
            if name not in ("report.json", GENAI_CONFIG_FILE):
                out.append(Placement(placed(layout, name), role_of_entry_file(name), result.entry.path / name, layout=layout))
        for variant in variants:
            for name in sorted(variant.entry.files):  # its graph, and external data named for the variant
                if name != "report.json":
                    out.append(Placement(placed(layout, name, variant.variant), VARIANT if name == "model.onnx" else GRAPH_DATA,
                                         variant.entry.path / name, layout=layout, variant=variant.variant))
    out.extend(Placement(side.name, role_of_checkpoint_file(side.name), side) for side in side_files(result.job.checkpoint))
    if GENAI_CONFIG_FILE in result.entry.files:  # exporter genai: the builder's own config for its own graph
        from hatch_onnx.genai_builder import placed_config_text

        builder_config = (result.entry.path / GENAI_CONFIG_FILE).read_text(encoding="utf-8")
        genai: Optional[str] = placed_config_text(builder_config, graph_path(primary(layouts)))
    else:
        genai = genai_config_text(result.job.checkpoint, result.job.model_type, result.job.feature,
                                  result.report["validation"]["graph"], graph_path(primary(layouts)))
    if genai is not None:
        out.append(Placement(GENAI_CONFIG_FILE, GENAI_CONFIG, text=genai))
    return out


def _file_record(folder: str, placement: Placement, digest) -> dict:
    if placement.text is not None:
        data = placement.text.encode("utf-8")
        size, file_hash = len(data), xxhash.xxh3_128_hexdigest(data)
    else:
        size, file_hash = placement.source.stat().st_size, digest(placement.source)
    record = {"path": f"{folder}/{placement.path}", "size": size, "xxh3_128": file_hash, "role": placement.role}
    if placement.layout is not None:
        record["layout"] = placement.layout
    return record


def manifest_entry(result: Any, checkpoint_fingerprint: str, folder: str, digest=None, variants: Iterable[Any] = ()) -> dict:
    """A feature's manifest entry; ``digest(path)`` gives the files' digests (default: read them).

    Cache entry files are digested by the cache already (``entry.files``); the side files are read.
    """
    from hatch_onnx.fingerprint import file_digest

    digest = digest or file_digest
    entry = result.entry
    variants = list(variants)
    cached = {entry.path / name: file_hash for name, (_, file_hash) in entry.files.items()}
    cached.update((v.entry.path / name, file_hash) for v in variants for name, (_, file_hash) in v.entry.files.items())
    records = [(p, _file_record(folder, p, lambda path: cached.get(path) or digest(path))) for p in placements(result, variants)]
    files = {p.path: record for p, record in records if p.variant is None}
    made = {v.variant: variant_entry(v, {p.path: record for p, record in records if p.variant == v.variant}) for v in variants}
    report = result.report
    validation = report["validation"]
    return {
        "files": dict(sorted(files.items())),
        "layouts": list(result.job.layouts),
        **({"variants": made} if made else {}),
        "opset": report["opset"],
        "dtype": report.get("dtype", "float32"),  # reports of entries made before --dtype existed are float32
        "inputs": validation["graph"]["inputs"],
        "outputs": validation["graph"]["outputs"],
        "validation": {
            "atol": validation["atol"],
            "max_abs_diff": {name: o["max_abs_diff"] for name, o in validation["outputs"].items()},
            "input_shapes": validation["inputs"],
            **({"generation": _generation_figures(validation["generation"])} if "generation" in validation else {}),
        },
        # an encoder-decoder's graph set: each member's interface and figures
        **({"graph_set": validation["graph_set"]["graphs"]} if "graph_set" in validation else {}),
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


def _generation_figures(figures: Mapping[str, Any]) -> dict:
    """What the manifest says of validation by generation (:mod:`hatch_onnx.generation`): the figures, not the tokens."""
    return {key: value for key, value in figures.items() if key != "tokens"}


def variant_entry(result: Any, files: Mapping[str, dict]) -> dict:
    """A variant's manifest entry: its file in each layout (``files``), settings and validation figures."""
    report = result.report
    size = sum(size for name, (size, _) in result.entry.files.items() if name != "report.json")  # graph and external data
    return {
        "files": dict(sorted(files.items())),
        "settings": report["settings"],
        "size_ratio": round(size / report["source_size"], 4),
        "validation": report["validation"]["outputs"],
        **({"generation": _generation_figures(report["validation"]["generation"])} if "generation" in report["validation"] else {}),
        # int4: each output against its fake-quantised reference (hatch_onnx.int4.check_weights)
        **({"weights": {name: {k: f[k] for k in ("max_abs_diff", "atol")} for name, f in report["validation"]["weights"].items()}}
           if "weights" in report["validation"] else {}),
        "toolchain": dict(result.entry.inputs.get("versions", {})),
        "cache_key": result.entry.key,
    }


def all_files(entry: Mapping[str, Any]) -> list[dict]:
    """Every file a feature's manifest entry ships: its graph files and its variants'."""
    files = list(entry["files"].values())
    for variant in entry.get("variants", {}).values():
        files.extend(variant["files"].values())
    return files


def shipped_files(models: Mapping[str, Any]) -> list[dict]:
    """Every file record of a manifest's ``models`` (graphs, variants, side files), sorted by path."""
    files = {record["path"]: record for features in models.values() for entry in features.values() for record in all_files(entry)}
    return [files[path] for path in sorted(files)]


def materialize(out: Path, results: Iterable[Any], prints: Mapping[Path, str], package_version: Optional[str] = None,
                variants: Iterable[Any] = (), stats: Any = None, signer: Any = None) -> dict:
    """Write every model folder of ``results`` (and their ``variants``) into ``out``; (re)write ``out/manifest.json``.

    ``stats`` (a :class:`~hatch_onnx.fingerprint.StatCache`) remembers digests by file state;
    ``signer`` (a :class:`~hatch_onnx.signing.Signer`) signs the manifest.
    """
    with out_lock(out):
        manifest, rewritten = _materialize(Path(out), list(results), prints, package_version, list(variants), stats)
        _sign(Path(out) / MANIFEST, signer, rewritten)
        return manifest


def _sign(manifest: Path, signer: Any, rewritten: bool) -> None:
    """Sign ``manifest``; without a key, drop the signature of an earlier manifest (it would not verify)."""
    from hatch_onnx.signing import SIGNATURE_SUFFIX, sign_manifest

    if signer is not None:
        sign_manifest(manifest, signer)
    elif rewritten:
        manifest.with_name(manifest.name + SIGNATURE_SUFFIX).unlink(missing_ok=True)


def _materialize(out: Path, results: list, prints: Mapping[Path, str], package_version: Optional[str], variants: list,
                 stats: Any) -> tuple[dict, bool]:
    from hatch_onnx.fingerprint import file_digest

    digest = stats.digest if stats is not None else file_digest  # StatCache.digest reads when it remembers nothing
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
        entries = {r.job.feature: manifest_entry(r, prints[r.job.checkpoint], f"{name}/{r.job.feature}", digest,
                                                 variants_of.get((name, r.job.feature), ()))
                   for r in model_results}
        if models.get(name) == entries and _intact(out, entries, digest):
            continue  # already materialised from the same cache entries: nothing to rewrite
        with as_atomic_folder(out / name) as staging:
            for result in model_results:
                write_feature_folder(staging / result.job.feature, placements(result, variants_of.get((name, result.job.feature), ())))
            _check_written(staging, out, entries)
        models[name] = entries

    from hatch_onnx.provenance import statement

    models = dict(sorted(models.items()))
    provenance = statement(models, shipped_files(models), out, manifest.get("provenance"))
    manifest = {"format": MANIFEST_FORMAT, "version": package_version, "hatch_onnx": __version__, "models": models,
                "provenance": provenance}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    rewritten = not manifest_path.is_file() or manifest_path.read_text(encoding="utf-8") != text
    if rewritten:
        write_text(manifest_path, text)
    return manifest, rewritten


def write_feature_folder(folder: Path, files: Iterable[Placement]) -> None:
    """Write ``files`` into ``folder`` (graphs as reflinks or copies of the cache's files)."""
    for placement in files:
        target = folder / placement.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if placement.text is not None:
            target.write_text(placement.text, encoding="utf-8")
        elif placement.role in (GRAPH, GRAPH_DATA, GRAPH_SET_MEMBER, VARIANT):
            clone_or_copy(placement.source, target)
        else:
            shutil.copyfile(placement.source, target)


def _intact(out: Path, entries: Mapping[str, dict], digest) -> bool:
    """Every file the entries list is in place with its size and digest."""
    for entry in entries.values():
        for data in all_files(entry):
            path = out / data["path"]
            try:
                if path.stat().st_size != data["size"] or digest(path) != data["xxh3_128"]:
                    return False
            except OSError:
                return False
    return True


def _check_written(staging: Path, out: Path, entries: Mapping[str, dict]) -> None:
    """The staged side files are what the manifest will say (one changed in the checkpoint while copied fails here)."""
    from hatch_onnx.fingerprint import file_digest

    for entry in entries.values():
        for data in all_files(entry):
            if data["role"] in (GRAPH, GRAPH_DATA, GRAPH_SET_MEMBER, VARIANT):  # verified cache entries; side files come from the checkpoint
                continue
            path = staging / Path(data["path"]).relative_to(Path(data["path"]).parts[0])
            if path.stat().st_size != data["size"] or file_digest(path) != data["xxh3_128"]:
                raise OSError(f"{out / data['path']}: changed while it was written; build again")


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
