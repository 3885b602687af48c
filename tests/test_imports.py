"""Cheap import: every module imports without the optional extras, and `import cmrt` stays light;
the layers hold (whole packages import only the layers below them, imports inside functions
included) and neither ``cmrt`` nor ``benchmarks`` has an import cycle."""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import pytest

import cmrt


def test_every_module_imports():
    for info in pkgutil.walk_packages(cmrt.__path__, "cmrt."):
        importlib.import_module(info.name)


@pytest.mark.integration  # a fresh process
def test_import_cmrt_is_cheap():
    code = ("import sys, cmrt; heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'tensorrt_rtx') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_surface():
    for name in cmrt.__all__:
        assert getattr(cmrt, name) is not None
    assert issubclass(cmrt.InputError, ValueError) and issubclass(cmrt.InputTypeError, TypeError)
    assert issubclass(cmrt.BundleNotFoundError, FileNotFoundError)


#: cmrt's layers, top first (the project's architecture page): a package may import itself and the layers
#: below its own, never one beside or above it. ``cmrt`` is the package's own ``__init__`` (the
#: facade: lazy names over the runtime and export); ``_args``, argument parsers the CLI modules share;
#: ``bench`` and ``generate``, the ``cmrt bench`` / ``cmrt generate`` commands the CLI names.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cmrt", "cli", "demo"),                         # thin entry points
    ("serve", "train", "interop", "bench", "generate"),  # Triton, training, diffusers drop-in, commands
    ("exporter",),                                   # calls the runtime to check what it wrote
    ("runtime",),                                    # runners over backends (onnxruntime, openvino, tensorrt)
    ("tensorrt", "graphs"),                          # TensorRT build + run | ONNX surgery both sides need
    ("bundle",),                                     # the contract between export and runtime
    ("pipelines",),                                  # text → latents → image, over models and samplers
    ("models", "samplers"),
    ("editing",),
    ("schedules", "parity", "_typed", "_args", "images"),
    ("_io",),                                        # atomic writes, digests: what writes files uses it
    ("errors",),
)
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
ROOTS = {"cmrt": Path(cmrt.__file__).parent, "benchmarks": Path(cmrt.__file__).parent.parent / "benchmarks"}


def _modules(package: str) -> dict[str, Path]:
    root = ROOTS[package]
    return {".".join((package,) + p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in root.rglob("*.py")}


KNOWN = _modules("cmrt") | _modules("benchmarks")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): imports for annotations only."""
    def flag(test: ast.expr) -> bool:
        return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and flag(node.test)
            for stmt in node.body for n in ast.walk(stmt)}


def _from_targets(base: str, names: list[str]) -> set[str]:
    """What ``from base import names`` imports: each name that is a module, else ``base``; names
    from cmrt's facade resolve to the module that defines them (its lazy table, its errors), and
    its ``__version__`` constant to nothing."""
    targets = set()
    for name in names:
        if f"{base}.{name}" in KNOWN:
            targets.add(f"{base}.{name}")
        elif base == "cmrt" and name in getattr(cmrt, "_LAZY", {}):
            targets.add(cmrt._LAZY[name][0])
        elif base == "cmrt" and name in vars(cmrt.errors):
            targets.add("cmrt.errors")
        elif not (base == "cmrt" and name == "__version__"):
            targets.add(base)
    return targets


def _base(package: str, node: ast.ImportFrom) -> str:
    """The module ``from X import ...`` names, relative imports resolved against ``package``."""
    if not node.level:
        return node.module
    parts = package.split(".")
    return ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported cmrt/benchmarks module, line) for every import in ``module``: at module level and
    inside functions, ``if TYPE_CHECKING:`` blocks left out; a string naming a dotted module (a
    table of lazy imports, ``importlib.import_module``) counts as importing it."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = _base(package, node)
            if base.split(".")[0] in ROOTS:
                found += [(t, node.lineno) for t in _from_targets(base, [a.name for a in node.names])]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] in ROOTS]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and (node.value in KNOWN or node.value.startswith("benchmarks.")):
            found.append((node.value, node.lineno))
    return [(t, line) for t, line in found if t != module]


def _import_graph(package: str) -> dict[str, set[str]]:
    """module → the modules of the same package it imports (see ``_imports``)."""
    mods = _modules(package)
    return {m: {t for t, _ in _imports(m, p) if t in mods} for m, p in mods.items()}


def _unit(module: str) -> str:
    """The layer unit of a cmrt module: its top-level package or module under cmrt (``cmrt``:
    the package's own ``__init__``); ``benchmarks`` for anything there."""
    parts = module.split(".")
    return "benchmarks" if parts[0] == "benchmarks" else parts[1] if len(parts) > 1 else "cmrt"


def test_every_cmrt_package_has_a_layer():
    units = {_unit(m) for m in _modules("cmrt")}
    missing = sorted(units - set(RANK))
    assert not missing, f"place {missing} in a layer of tests/test_imports.py LAYERS"


def test_layers_hold():
    """Whole packages import only the layers below them (the runtime nothing of export, training,
    serving, the CLI or the demo); nothing in cmrt imports benchmarks."""
    wrong = []
    for module, path in sorted(_modules("cmrt").items()):
        src = _unit(module)
        for target, line in _imports(module, path):
            dst = _unit(target)
            where = f"{path.relative_to(ROOTS['cmrt'].parent)}:{line} imports {target}"
            if dst == "benchmarks":
                wrong.append(f"{where}: nothing in cmrt may import benchmarks")
            elif dst != src and src in RANK and dst in RANK and RANK[dst] <= RANK[src]:
                wrong.append(f"{where}: {src} may not import {dst} (" +
                             ("the same layer" if RANK[dst] == RANK[src] else "a layer above it") + ")")
    assert not wrong, "layer violations:\n" + "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    cycles, seen, done = [], set(), set()

    def visit(node, path):
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    cycles.append(" → ".join(cycle))
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return cycles


@pytest.mark.parametrize("package", ["cmrt", "benchmarks"])
def test_no_import_cycles(package):
    """Data flows one way (checkpoint → model → sampler → bundle → FP16 graph → engine → runtime):
    no module imports, even lazily, a module that imports it back."""
    cycles = _cycles(_import_graph(package))
    assert not cycles, f"import cycles in {package}: " + "; ".join(cycles)


def test_the_checker_sees_what_it_must():
    """The layer and cycle checks see imports inside functions, relative and facade imports and
    lazy-import strings, and skip TYPE_CHECKING blocks (checked on the checker's own helpers)."""
    assert _from_targets("cmrt", ["export", "InputError", "__version__"]) == {"cmrt.exporter.api", "cmrt.errors"}
    assert _from_targets("cmrt", ["graphs"]) == {"cmrt.graphs"}
    assert _unit("cmrt.runtime.decoder") == "runtime" and _unit("cmrt") == "cmrt"
    assert _unit("benchmarks.cli") == "benchmarks"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a → b → c → a"]
    facade = {t for t, _ in _imports("cmrt", ROOTS["cmrt"] / "__init__.py")}
    assert facade >= {"cmrt.errors", cmrt._LAZY["Sampler"][0], "cmrt.exporter.api"}  # the lazy table's strings count
    assert "cmrt.parity" in facade  # ... while its TYPE_CHECKING imports alone would not
    check = {t for t, _ in _imports("cmrt.runtime.check", ROOTS["cmrt"] / "runtime" / "check.py")}
    assert "cmrt.tensorrt" in check  # imported inside record_engine_parity
    mods = _modules("cmrt")
    sync = next(m for m in mods if m.endswith(".layer_sync"))  # the canvas-norm decode (runtime.tiled)
    assert "cmrt.graphs" in {t for t, _ in _imports(sync, mods[sync])}  # ``from .. import graphs``
