"""Cheap import: every module imports without the optional extras, and `import cmrt` stays light."""

import importlib
import pkgutil
import subprocess
import sys

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


def _import_graph() -> dict[str, set[str]]:
    """cmrt module → the cmrt modules it imports (module level and inside functions; imports under
    ``if TYPE_CHECKING:`` are left out, and ``from . import sub`` counts as importing ``sub`` only)."""
    import ast
    from pathlib import Path

    root = Path(cmrt.__file__).parent
    mods = {".".join(("cmrt",) + p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                graph[name] |= set(subs) if subs else ({target} & set(mods))
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names} & set(mods)
        graph[name].discard(name)
    return graph


def test_no_import_cycles():
    """Data flows one way (checkpoint → model → sampler → bundle → FP16 graph → engine → runtime):
    no module imports, even lazily, a module that imports it back."""
    graph = _import_graph()
    cycles, seen = [], set()

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

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, cycles
