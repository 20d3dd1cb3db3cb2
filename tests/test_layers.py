"""The package's import graph: no circles, and every import goes down a floor.

The floors, top first, follow a build's calls: the front doors (CLI, Hatch hook) call the
pipeline (build -> params -> plan -> cache -> pool), whose workers call the exporter, which calls
the frameworks, which use the architectures' configs. Utilities that stand apart (errors,
atomic writes, the toolchain) sit at the bottom. Every import statement counts, those inside
functions included (only ``if TYPE_CHECKING:`` blocks are skipped: they never run). A new
module must be given a floor here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hatch_onnx"

FLOORS: tuple[tuple[str, ...], ...] = (
    ("",),  # the top-level API: lazy names from everywhere below
    ("__main__", "onnx", "hatch"),  # package façades
    ("onnx.convert", "onnx.features", "onnx.config"),  # the transformers.onnx API, a thin layer over all below
    ("cli", "hatch.hooks"),
    ("hatch.plugin", "scaffold"),
    ("hatch.folder", "hatch.interpreter"),
    ("build", "verify"),
    ("ray_executor",),  # build --executor ray: Ray tasks that run the pool's worker, results through the remote
    ("remote",),
    ("params",),
    ("schema", "plan"),
    ("package",),
    ("provenance",),  # the manifest's in-toto statement
    ("cache",),
    ("fingerprint",),
    ("server",),
    ("pool",),
    ("worker",),
    ("exporting", "variants"),
    ("int4", "int8"),  # the int4 variant: MatMulNBits and its fake-quantised reference; int8: onnxruntime's, a tied table once
    ("genai_builder", "fused"),  # exporter genai (onnxruntime-genai's builder in a subprocess); exporter fused (written from the weights)
    ("graph_sets",),  # an encoder-decoder's graphs for generation: encoder, decoders, merged
    ("generation",),  # validation by generation: with-past graphs decode what the model generates
    ("validation",),  # the one validator: every graph the project ships
    ("loading",),  # models and preprocessors from local checkpoints
    ("frameworks",),  # backend(name): the one place a framework is chosen
    ("frameworks.pytorch", "frameworks.tensorflow"),
    ("graph_passes",),  # framework-free ONNX graph passes
    ("frameworks.env", "frameworks.exporters"),  # what is known of a framework without importing it
    ("genai", "layouts"),  # consumer files: genai_config.json, where each layout puts files
    ("checkpoints",),  # what a checkpoint is, read without loading it
    ("models",),  # the registry and every architecture module (which may build on each other)
    ("config",),  # the OnnxConfig contract
    ("signing",),  # Ed25519 keys and signatures
    ("toolchain", "runtime", "atomic", "weights", "_lazy"),
    ("errors", "__about__"),
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _floor(module: str) -> int:
    if module.startswith("models"):
        module = "models"
    for index, floor in enumerate(FLOORS):
        if module in floor:
            return index
    raise AssertionError(f"hatch_onnx.{module} has no floor in tests/test_layers.py: give it one")


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
               for node in ast.walk(branch)}
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            candidates = [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative: resolve against this module's package
                source = ".".join(filter(None, ["hatch_onnx", *package[: len(package) - node.level + 1], source]))
            candidates = [[f"{source}.{alias.name}", source] for alias in node.names]
        else:
            continue
        for names in candidates:  # the most precise name that is one of our modules
            for name in names:
                local = name.removeprefix("hatch_onnx").removeprefix(".")
                if (name == "hatch_onnx" or name.startswith("hatch_onnx.")) and local in modules:
                    if local != module:
                        found.add(local)
                    break
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def _assert_acyclic(graph: dict[str, set[str]], what: str) -> None:
    """Depth first: a node met again on the current path closes a circle, named in the error."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                raise AssertionError(f"{what} circle: " + " -> ".join(path[path.index(target):] + [node, target]))
            if target not in state:
                visit(target, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_import_circle():
    _assert_acyclic(_graph(), "import")


def test_every_import_goes_down_a_floor():
    upward = [
        f"hatch_onnx.{module} (floor {_floor(module)}) imports hatch_onnx.{target} (floor {_floor(target)})"
        for module, targets in _graph().items() for target in sorted(targets)
        if _floor(target) < _floor(module) or (_floor(target) == _floor(module) and not module.startswith("models"))
    ]
    assert not upward, "\n".join(upward)


def _package(module: str) -> str:
    """The top-level package or module a module belongs to (``frameworks.pytorch`` -> ``frameworks``)."""
    return module.split(".")[0]


def test_no_circle_between_packages():
    """Collapsed to top-level packages and modules, the import graph is still acyclic."""
    packages: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        packages.setdefault(_package(module), set()).update(_package(t) for t in targets if _package(t) != _package(module))
    _assert_acyclic(packages, "package")


def test_the_checker_finds_circles():
    _assert_acyclic({"a": {"b"}, "b": set()}, "test")
    try:
        _assert_acyclic({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "test")
    except AssertionError as exc:
        assert str(exc) == "test circle: a -> b -> c -> a"
    else:
        raise AssertionError("a circle went unnoticed")


def test_the_checker_sees_imports_inside_functions():
    graph = _graph()
    assert "exporting" in graph["worker"]  # imported inside serve()
    assert "frameworks" in graph["onnx.convert"]  # imported inside export()
    assert "frameworks.pytorch" in graph["frameworks"]  # imported inside backend()
    assert "models.bart" in graph["models.mbart"] or "models.bart" in graph["models.marian"]
