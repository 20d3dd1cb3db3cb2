"""``hatch-onnx``: argument parsing and printing only; the work happens in the core modules."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from hatch_onnx.__about__ import __version__
from hatch_onnx.errors import HatchOnnxError

PROG = "hatch-onnx"


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="export one checkpoint and validate it (flags of python -m transformers.onnx)")
    p.add_argument("-m", "--model", required=True, type=Path, help="local checkpoint folder")
    p.add_argument("--feature", default="default", help="the feature to export (default: %(default)s)")
    p.add_argument("--framework", choices=("pt", "tf"), help="framework of the checkpoint (default: detected)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the architecture's minimum)")
    p.add_argument("--atol", type=float, help="validation tolerance (default: the architecture's)")
    p.add_argument("--preprocessor", choices=("auto", "tokenizer", "feature_extractor", "processor"), default="auto",
                   help="preprocessor for the export's dummy inputs (auto: made from the model config)")
    p.add_argument("--cache_dir", "--cache-dir", dest="cache_dir", help="accepted for compatibility; checkpoints are local")
    p.add_argument("--export_with_transformers", action="store_true", help="accepted for compatibility; no effect")
    p.add_argument("--exporter", choices=("torchscript", "dynamo", "genai", "fused"), default=None,
                   help="torch.onnx's exporter; genai: onnxruntime-genai's model builder; fused: a rotary decoder's "
                        "graph written with fused ops behind the pinned interface (default: fused for the causal-lm-with-past "
                        "of llama, mistral, qwen2 and qwen3 when no opset below 23 is asked for, else torchscript)")
    p.add_argument("--dtype", type=_dtype, default="float32", metavar="{float32,float16}",
                   help="precision to load, export and validate in (PyTorch; fp32/fp16 accepted; default: %(default)s)")
    p.add_argument("--report", type=Path, help="write a JSON validation report here")
    p.add_argument("--allow-new-head", action="store_true", help="export even if the checkpoint lacks the head's weights")
    p.add_argument("--layout", action="append", choices=("optimum", "transformers.js"),
                   help="where the folder's files go, for each consumer (repeatable; default: optimum)")
    p.add_argument("output", type=Path, help="folder that receives the model (graph, config, preprocessor files)")
    p.set_defaults(run=_run_export)


def _dtype(value: str) -> str:
    """float32 or float16; Optimum's fp32 and fp16 name the same."""
    from hatch_onnx.exporting import DTYPES

    named = {"fp32": "float32", "fp16": "float16"}.get(value, value)
    if named not in DTYPES:
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose {' or '.join(DTYPES)})")
    return named


def _run_export(args: argparse.Namespace) -> int:
    from hatch_onnx import server
    from hatch_onnx.exporting import ExportRequest
    from hatch_onnx.layouts import DEFAULT_LAYOUTS

    request = ExportRequest(
        model=args.model.absolute(), feature=args.feature, framework=args.framework, opset=args.opset, atol=args.atol,
        exporter=args.exporter, preprocessor=args.preprocessor, allow_new_head=args.allow_new_head, cache_dir=args.cache_dir,
        dtype=args.dtype, layouts=None if args.output.suffix == ".onnx" else tuple(args.layout or DEFAULT_LAYOUTS),
    )
    payload = {**_fields(request), "output": str(args.output.absolute()), "report": str(args.report.absolute()) if args.report else None}
    if args.debug:  # in this process, so that a failure shows its traceback
        from hatch_onnx.exporting import export_checkpoint

        report = export_checkpoint(request, args.output, args.report, log=lambda line: print(line, file=sys.stderr))
        return _print_export(args, report)
    reply = None
    if server.enabled():
        from hatch_onnx.checkpoints import determine_framework

        framework = determine_framework(str(request.model), request.framework)  # bad input: before any work
        reply = server.request(payload, framework)
        if reply is None:
            server.start(framework)  # warms up on the other core while this call exports in-process
    if reply is None:
        from hatch_onnx.worker import handle

        reply = handle(payload)
    for line in reply["log"]:
        print(line, file=sys.stderr)
    if not reply["ok"]:
        hint = " (rerun with --debug for the traceback)" if reply.get("unexpected") else ""
        print(f"{PROG}: error: {reply['error']}{hint}", file=sys.stderr)
        return reply["exit_code"]
    return _print_export(args, reply["report"])


def _print_export(args: argparse.Namespace, report: dict) -> int:
    graph = next((name for name in report["files"] if name.endswith("model.onnx")), "model.onnx")
    target = args.output if args.output.suffix == ".onnx" else args.output / graph
    print(f"Validated {target} ({report['model_type']}, {report['feature']}, opset {report['opset']}, {report['exporter']})")
    for name, figures in report["validation"]["outputs"].items():
        print(f"  {name:<28} shape {figures['shape']!s:<20} max abs diff {figures['max_abs_diff']:.2e} <= atol {figures['atol']:g}")
    for graph, figures in report["validation"].get("graph_set", {}).get("graphs", {}).items():
        print(f"  {graph:<28} max abs diff {figures['max_abs_diff']:.2e} <= atol {report['atol']:g}")
    generated = report["validation"].get("generation")
    if generated:
        if generated["tokens_equal"] is None:  # hidden states (teacher-forced): no token chosen
            print(f"  generation: {generated['steps']} steps at batch {generated['batch']}, teacher-forced, "
                  f"max {generated['output']} diff {generated['max_diff']:.2e}")
        else:
            tokens = "tokens equal" if generated["tokens_equal"] else f"a tie at step {generated['tie']['step']}"
            padded = f" ({generated['padding']}-padded)" if "padding" in generated else ""
            print(f"  generation: {generated['steps']} steps at batch {generated['batch']}{padded}, {tokens}, "
                  f"max logits diff {generated['max_logits_diff']:.2e}")
    timings = report["timings"]
    also = f", generate {timings['generate']:.2f}s" if "generate" in timings else ""
    print(f"  load {timings['load']:.2f}s, export {timings['export']:.2f}s, validate {timings['validate']:.2f}s{also}")
    return 0


def _fields(request) -> dict:
    import dataclasses

    return {name: str(value) if isinstance(value, Path) else value for name, value in dataclasses.asdict(request).items()}


def _features_parser(sub) -> None:
    p = sub.add_parser("features", help="print the support matrix")
    p.add_argument("model_type", nargs="?", help="one model type")
    p.set_defaults(run=_run_features)


def _run_features(args: argparse.Namespace) -> int:
    from hatch_onnx.models import REGISTRY, support_for
    from hatch_onnx.toolchain import transformers_major

    line = transformers_major()
    if line is None:
        line = 5  # what `pip install hatch-onnx[torch]` would bring
    if args.model_type:
        support = support_for(args.model_type)
        for feature in support.features:
            reason = support.unavailable_reason(feature, line)
            note = f"  (not exportable with transformers {line}.x: {reason})" if reason else "" if feature in support.tensorflow else "  (PyTorch only)"
            print(f"{feature}{note}")
        return 0
    print(f"model type: features (* = PyTorch only, ! = not exportable with transformers {line}.x; "
          "the others also from TensorFlow checkpoints, with transformers 4.x)")
    for model_type, support in REGISTRY.items():
        marks = [f + ("!" if support.unavailable_reason(f, line) else "" if f in support.tensorflow else "*") for f in support.features]
        print(f"{model_type}: {', '.join(marks)}")
    return 0


def _build_parser(sub) -> None:
    p = sub.add_parser("build", help="export every (model, feature) of params.yaml, through the cache")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="build only these models")
    p.add_argument("-j", "--jobs", type=_positive_int, default=1, help="worker processes (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("build/onnx"), help="where to materialise (default: %(default)s)")
    p.add_argument("--python", help="interpreter for PyTorch exports (default: $HATCH_ONNX_PYTHON or this one)")
    p.add_argument("--python-tf", help="interpreter for TensorFlow exports, with transformers 4.x and hatch-onnx[tf] "
                                       "(default: $HATCH_ONNX_PYTHON_TF or --python's)")
    p.add_argument("--layout", action="append", choices=("optimum", "transformers.js"),
                   help="where the folders' files go, for each consumer (repeatable; default: params.yaml's onnx.layout)")
    p.add_argument("--executor", choices=("local", "ray"),
                   help="who exports the misses: this machine's worker pool, or a Ray cluster (default: params.yaml's onnx.executor, local)")
    p.add_argument("--ray-address", metavar="ADDRESS",
                   help="the Ray cluster for --executor ray (default: $RAY_ADDRESS, else a Ray instance started for the build)")
    p.add_argument("--metrics", type=Path, help="write validation figures as a metrics file (JSON: feature -> output -> figures)")
    p.add_argument("--plots", type=Path, help="write validation figures as plot records (JSON list, one per output)")
    p.set_defaults(run=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from hatch_onnx.build import run_build
    from hatch_onnx.errors import BuildError

    try:
        result = run_build(args.params, only=args.only, jobs=args.jobs, out=args.out, python=args.python, python_tf=args.python_tf,
                           layouts=tuple(args.layout) if args.layout else None, executor=args.executor, ray_address=args.ray_address)
    except BuildError as exc:
        _print_table(exc.result)
        raise
    _print_table(result)
    if args.metrics or args.plots:
        from hatch_onnx.package import write_validation_figures

        write_validation_figures(result.results + result.variants, metrics=args.metrics, plots=args.plots)
    if result.exported == 0:
        print(f"Nothing exported: all {len(result.results)} job(s) came from the cache.")
    print(f"Wrote {args.out}/ ({len(result.results)} model(s) and manifest.json)")
    return 0


def _toolchain_parser(sub) -> None:
    p = sub.add_parser("toolchain", help="print the versions the plan's cache keys hold, per framework (JSON)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    p.add_argument("--python", help="interpreter for PyTorch exports (as for build)")
    p.add_argument("--python-tf", help="interpreter for TensorFlow exports (as for build)")
    p.add_argument("--out", type=Path, help="write the JSON here instead of stdout (a DVC stage's output)")
    p.set_defaults(run=_run_toolchain)


def _run_toolchain(args: argparse.Namespace) -> int:
    """The toolchain every cache key of the plan holds: a DVC stage that always runs writes it, and
    the export stages depend on it, so an upgrade re-runs them (their keys decide what re-exports)."""
    import json

    from hatch_onnx.build import resolve_toolchains
    from hatch_onnx.params import read_params
    from hatch_onnx.plan import resolve_plan

    plan = resolve_plan(read_params(args.params))
    versions = {framework: dict(sorted(toolchain.versions.items()))
                for framework, toolchain in sorted(resolve_toolchains(plan, args.python, args.python_tf).items())}
    text = json.dumps(versions, indent=2, sort_keys=True) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        from hatch_onnx.atomic import write_text

        write_text(args.out, text)
    return 0


def _print_table(result) -> None:
    """One row per job; a node column when some job ran on a Ray node (the local pool's rows stay as they were)."""
    rows = result.results + result.variants
    nodes = any(r.node for r in rows)
    header = f"{'job':<40} {'result':<9} {'time':>8}  max abs diff"
    print(f"{header:<74}  node" if nodes else header)
    for r in rows:
        diff = r.max_abs_diff
        line = f"{r.label:<40} {r.status:<9} {r.seconds:7.2f}s  {'-' if diff is None else f'{diff:.2e}'}"
        print(f"{line:<74}  {r.node or 'driver'}" if nodes else line)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _hash_parser(sub) -> None:
    p = sub.add_parser("hash", help="print the content fingerprint of a checkpoint (file or folder)")
    p.add_argument("path", type=Path)
    p.set_defaults(run=_run_hash)


def _run_hash(args: argparse.Namespace) -> int:
    from hatch_onnx.cache import resolve_cache_root
    from hatch_onnx.fingerprint import default_stat_cache, fingerprint

    with default_stat_cache(resolve_cache_root(None, Path.cwd())) as stats:
        print(fingerprint(args.path, stats))
    return 0


def _cache_parser(sub) -> None:
    p = sub.add_parser("cache", help="inspect and maintain the export cache")
    p.add_argument("action", choices=("path", "ls", "verify", "gc", "push", "pull"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file naming the cache (optional)")
    p.add_argument("--remote", action="store_true", help="ls: list the remote cache's entries instead")
    p.add_argument("--only", nargs="+", metavar="NAME", help="push/pull: only these models of params.yaml")
    p.add_argument("--python", help="push/pull: interpreter whose toolchain the keys hold (as for build)")
    p.add_argument("--python-tf", help="push/pull: the same for TensorFlow jobs")
    p.add_argument("--max-age-days", type=float, help="gc: remove entries older than this")
    p.add_argument("--max-size-mb", type=float, help="gc: then remove the oldest until the cache fits")
    p.set_defaults(run=_run_cache)


def _run_cache(args: argparse.Namespace) -> int:
    from hatch_onnx.cache import CacheStore, resolve_cache_root
    from hatch_onnx.params import read_params

    if args.action in ("push", "pull"):
        from hatch_onnx.build import sync_remote

        moved, lacking = sync_remote(args.params, args.action, only=args.only, python=args.python, python_tf=args.python_tf)
        for label in moved:
            print(f"{'pushed' if args.action == 'push' else 'pulled'} {label}")
        where = "local cache" if args.action == "push" else "remote cache"
        print(f"{len(moved)} job(s) {args.action}ed; {lacking} not in the {where} to {args.action}")
        return 0
    source = read_params(args.params) if args.params.is_file() else None
    if args.remote:
        from hatch_onnx.errors import BadInputError, RemoteError
        from hatch_onnx.params import REMOTE_ENV
        from hatch_onnx.remote import Remote

        url = source.remote if source is not None else os.environ.get(REMOTE_ENV)
        if not url:
            raise BadInputError(f"no remote cache: set onnx.remote in {args.params} or ${REMOTE_ENV}")
        try:
            keys = Remote(url).keys()
        except RemoteError as exc:
            print(f"{PROG}: error: remote cache {url}: {exc}", file=sys.stderr)
            return 1
        for key in keys:
            print(key)
        print(f"{len(keys)} entr(ies) in {url}")
        return 0
    # no params file: $HATCH_ONNX_CACHE or the default beside it
    store = CacheStore(source.cache_root if source is not None else resolve_cache_root(None, args.params.absolute().parent))
    if args.action == "path":
        print(store.root)
    elif args.action == "ls":
        for entry in store.ls():
            inputs = entry.inputs
            size = sum(size for size, _ in entry.files.values())
            print(f"{entry.key}  {inputs.get('model_type', '?'):<12} {inputs.get('feature', '?'):<26} {size / 1e6:8.2f} MB")
    elif args.action == "verify":
        removed = store.verify()
        for key, reason in removed:
            print(f"removed {key}: {reason}")
        print(f"{len(store.ls())} entr(ies) verified, {len(removed)} removed")
    else:
        max_age = args.max_age_days * 86400 if args.max_age_days is not None else None
        max_size = int(args.max_size_mb * 1e6) if args.max_size_mb is not None else None
        removed = store.gc(max_age_seconds=max_age, max_size_bytes=max_size)
        print(f"removed {len(removed)} entr(ies); {store.size() / 1e6:.2f} MB left")
    return 0


def _init_parser(sub) -> None:
    p = sub.add_parser("init", help="write params.yaml, dvc.yaml and the pyproject hook section into a project")
    p.add_argument("--model", required=True, type=Path, help="a local checkpoint folder to start with")
    p.add_argument("--name", help="the model's name in params.yaml (default: the folder's name)")
    p.add_argument("--feature", action="append", dest="features", help="a feature to export (repeatable; default: default)")
    p.add_argument("--destination", help="where the models go inside the wheel (default: <package>/onnx)")
    p.add_argument("--dir", type=Path, default=Path("."), help="the project folder (default: .)")
    p.set_defaults(run=_run_init)


def _run_init(args: argparse.Namespace) -> int:
    from hatch_onnx.scaffold import init_project, needs_build_requirement

    written = init_project(args.dir, args.model, args.name, args.features or ["default"], args.destination)
    for path in written:
        print(f"wrote {path}")
    if needs_build_requirement(args.dir / "pyproject.toml"):
        print('note: add "hatch-onnx" to [build-system] requires in pyproject.toml so that hatch loads the hook')
    print("next: dvc init (if needed), then dvc repro")
    return 0


def _show_parser(sub) -> None:
    p = sub.add_parser("show", help="print what a materialised folder holds (its manifest.json)")
    p.add_argument("out", type=Path, nargs="?", default=Path("build/onnx"), help="the folder (default: %(default)s)")
    p.set_defaults(run=_run_show)


def _run_show(args: argparse.Namespace) -> int:
    import json

    from hatch_onnx.errors import BadInputError

    manifest_file = args.out / "manifest.json"
    if not manifest_file.is_file():
        raise BadInputError(f"{manifest_file}: not found (run hatch-onnx build or dvc repro first)")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    print(f"{'model':<16} {'feature':<26} {'opset':>5} {'MB':>7}  {'max abs diff':>12} {'atol':>8}  {'source':<16} layouts")
    for name, features in manifest["models"].items():
        for feature, entry in features.items():
            # the size a consumer downloads: one layout's graphs (the roles say which files those are)
            primary = entry.get("layouts", ["optimum"])[0]
            size = sum(f["size"] for f in entry["files"].values() if f.get("layout", primary) == primary) / 1e6
            diff = max(entry["validation"]["max_abs_diff"].values())
            source = entry["source"]
            origin = f"{source['model_type']} ({source['framework']})"
            print(f"{name:<16} {feature:<26} {entry['opset']:>5} {size:7.2f}  {diff:12.2e} {entry['validation']['atol']:8.0e}  "
                  f"{origin:<16} {', '.join(entry.get('layouts', ['optimum']))}")
    return 0


def _verify_parser(sub) -> None:
    p = sub.add_parser("verify", help="check shipped models (a folder, a wheel, an installed package) against their "
                                      "manifest, provenance and signature")
    p.add_argument("path", help="a build --out folder, a wheel, or an installed package's folder or import name")
    p.add_argument("--trusted-key", action="append", type=Path, metavar="PEM",
                   help="an Ed25519 public key the manifest must be signed by (repeatable; default: $HATCH_ONNX_TRUSTED_KEYS)")
    p.set_defaults(run=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every manifest found holds, 1 when one does not, 2 when there is nothing to check."""
    from hatch_onnx.signing import Keys, resolve_keys
    from hatch_onnx.verify import verify

    keys = Keys(trusted=tuple(args.trusted_key)) if args.trusted_key else resolve_keys({}, Path.cwd())
    _, verifier = Keys(trusted=keys.trusted).load()  # never the signing key: verify trusts only what it is told
    failed = False
    for verdict in verify(args.path, verifier):
        for problem in verdict.problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        notes = f" ({'; '.join(verdict.notes)})" if verdict.notes else ""
        if verdict.ok:
            print(f"verified {verdict.manifest}: {verdict.files} files{notes}")
        else:
            failed = True
            print(f"{PROG}: {verdict.manifest}: {len(verdict.problems)} problem(s){notes}", file=sys.stderr)
    return 1 if failed else 0


PARSERS: tuple[Callable, ...] = (_init_parser, _show_parser, _export_parser, _build_parser, _toolchain_parser, _hash_parser, _cache_parser,
                                 _features_parser, _verify_parser)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (usage goes to ``--help``), exit 2 as before."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Export Hugging Face checkpoints to validated, cached ONNX.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The program (``hatch-onnx``, ``python -m hatch_onnx``): its exit code. ``argv`` None: the process's own arguments."""
    code, args = _main(list(sys.argv[1:] if argv is None else argv))
    if argv is None and getattr(args, "run", None) is _run_export:
        _exit_without_teardown(code)
    return code


def _exit_without_teardown(code: int) -> None:
    """End the process now, skipping the interpreter's teardown: what an ``export`` run as the program does last.

    An export leaves torch, transformers and onnxruntime loaded, and tearing them down took 0.7 to
    0.9 s of a 0.5B decoder's 10 s export, with nothing left to do: the graph, its data and the
    report are in place and every file is closed. What the interpreter's exit would still run
    that matters, logging's flush and the standard streams', runs here first.
    """
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left, a closed stream: nothing to deliver to
            pass
    os._exit(code)


def _main(argv: list[str]) -> tuple[int, Optional[argparse.Namespace]]:
    # `hatch-onnx --model DIR OUT` works as `python -m transformers.onnx --model DIR OUT` did.
    if argv and argv[0] in ("-m", "--model") or any(a.startswith("--model=") for a in argv[:1]):
        argv.insert(0, "export")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args), args
    except HatchOnnxError as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code, args
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130, args
    except BrokenPipeError:  # `hatch-onnx features | head`: the reader left, nothing is wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0, args
    except Exception as exc:  # a bug or an unexpected failure: still one line unless --debug
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{PROG}: error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1, args


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
