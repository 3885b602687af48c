"""The benchmarks' shape: their modules import each other without a circle (imports inside
functions counted), ``cases`` is the leaf the others share; ``cmrt bench`` runs a source
checkout's suites and, without one, says in one line how to get one."""

import ast
from pathlib import Path

import pytest

import cmrt
from cmrt import bench
from cmrt.cli import main
from cmrt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
LEAVES = {"backends": set(), "measure": set(), "cases": {"backends"}}  # module → the benchmarks it may import


def _imports(path: Path) -> set[str]:
    """The ``benchmarks`` modules ``path`` imports anywhere in it (relative or absolute)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1:  # from . import x / from .x import y
                found |= {base.split(".")[0]} if base else {a.name for a in node.names}
            elif base == "benchmarks":
                found |= {a.name for a in node.names}
            elif base.startswith("benchmarks."):
                found.add(base.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("benchmarks.")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in BENCHMARKS.glob("*.py")} - {"__init__"}
    return {m: _imports(BENCHMARKS / f"{m}.py") & modules for m in modules}


def test_import_graph_finds_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from . import measure\nfrom .cases import Case\ndef f():\n    from benchmarks.paired import x\n"
                 "    import benchmarks.edit\n")
    assert _imports(f) == {"measure", "cases", "paired", "edit"}


def test_benchmarks_import_no_circle():
    graph = _graph()
    assert {"suites", "paired", "edit", "cases"} <= graph.keys()

    def visit(m, path):
        assert m not in path, "import circle: " + " → ".join([*path[path.index(m):], m])
        for n in graph[m]:
            visit(n, [*path, m])
    for m in graph:
        visit(m, [])


def test_cases_is_the_shared_leaf():
    graph = _graph()
    for leaf, allowed in LEAVES.items():
        assert graph[leaf] <= allowed, (leaf, graph[leaf])
    for user in ("suites", "paired", "edit", "roofline", "serving"):
        assert "cases" in graph[user], user
    private = [m for m in graph if "_weights_digest" in (BENCHMARKS / f"{m}.py").read_text()]
    assert not private


def test_checkout_found_beside_the_package():
    assert bench.find_checkout(env={}) == ROOT == Path(cmrt.__file__).resolve().parents[1]


def test_checkout_from_the_environment(tmp_path):
    assert bench.find_checkout(env={bench.CHECKOUT_ENV: str(ROOT)}) == ROOT
    with pytest.raises(ConfigError, match=bench.CHECKOUT_ENV):
        bench.find_checkout(env={bench.CHECKOUT_ENV: str(tmp_path)})


def test_no_checkout_beside_an_installed_package(tmp_path):
    (tmp_path / "site-packages" / "cmrt").mkdir(parents=True)
    (tmp_path / "site-packages" / "benchmarks").mkdir()  # someone else's package of that name
    (tmp_path / "site-packages" / "benchmarks" / "__init__.py").write_text("")
    assert bench.find_checkout(env={}, package_dir=tmp_path / "site-packages" / "cmrt") is None


@pytest.mark.parametrize("args", [["--suite", "smoke"], [], ["-h"]])
def test_bench_without_a_checkout_says_how_to_get_one(tmp_path, monkeypatch, capsys, args):
    """An installed wheel (no benchmarks/ beside cmrt/): one line, exit 2, whatever the options."""
    monkeypatch.delenv(bench.CHECKOUT_ENV, raising=False)
    monkeypatch.setattr(bench, "find_checkout", lambda: None)
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a source checkout" in err[0] and "git clone" in err[0], err


def test_bench_with_a_bad_checkout_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(bench.CHECKOUT_ENV, str(tmp_path))
    assert main(["bench", "--suite", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bench.CHECKOUT_ENV in err[0] and str(tmp_path) in err[0], err


def test_benchmarks_not_installed():
    """pyproject installs cmrt only: a top-level ``benchmarks`` in site-packages would collide."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text[text.index("[tool.setuptools.packages.find]"):].split("\n[", 1)[0]
    assert 'include = ["cmrt*"]' in section and "benchmarks*" not in section
