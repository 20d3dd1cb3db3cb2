"""``hatch-onnx``: argument parsing and printing only; the work happens in the core modules."""

from __future__ import annotations

import argparse
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
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript", help="torch.onnx exporter (default: %(default)s)")
    p.add_argument("--report", type=Path, help="write a JSON validation report here")
    p.add_argument("--allow-new-head", action="store_true", help="export even if the checkpoint lacks the head's weights")
    p.add_argument("output", type=Path, help="folder that receives model.onnx")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from hatch_onnx.exporting import ExportRequest, export_checkpoint

    request = ExportRequest(
        model=args.model, feature=args.feature, framework=args.framework, opset=args.opset, atol=args.atol,
        exporter=args.exporter, preprocessor=args.preprocessor, allow_new_head=args.allow_new_head, cache_dir=args.cache_dir,
    )
    report = export_checkpoint(request, args.output, args.report, log=lambda line: print(line, file=sys.stderr))
    target = args.output if args.output.suffix == ".onnx" else args.output / "model.onnx"
    print(f"Validated {target} ({report['model_type']}, {report['feature']}, opset {report['opset']}, {report['exporter']})")
    for name, figures in report["validation"]["outputs"].items():
        print(f"  {name:<28} shape {figures['shape']!s:<20} max abs diff {figures['max_abs_diff']:.2e} <= atol {figures['atol']:g}")
    timings = report["timings"]
    print(f"  load {timings['load']:.2f}s, export {timings['export']:.2f}s, validate {timings['validate']:.2f}s")
    return 0


def _features_parser(sub) -> None:
    p = sub.add_parser("features", help="print the support matrix")
    p.add_argument("model_type", nargs="?", help="one model type")
    p.set_defaults(run=_run_features)


def _run_features(args: argparse.Namespace) -> int:
    from hatch_onnx.onnx.features import FeaturesManager

    if args.model_type:
        for feature in FeaturesManager.get_supported_features_for_model_type(args.model_type):
            print(feature)
        return 0
    for model_type in FeaturesManager._SUPPORTED_MODEL_TYPE:
        print(f"{model_type}: {', '.join(FeaturesManager._SUPPORTED_MODEL_TYPE[model_type])}")
    return 0


PARSERS: tuple[Callable, ...] = (_export_parser, _features_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Export Hugging Face checkpoints to validated, cached ONNX.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `hatch-onnx --model DIR OUT` works as `python -m transformers.onnx --model DIR OUT` did.
    if argv and argv[0] in ("-m", "--model") or any(a.startswith("--model=") for a in argv[:1]):
        argv.insert(0, "export")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except HatchOnnxError as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unexpected failure: still one line unless --debug
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{PROG}: error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
