"""The README's quick-start commands, executed as written in a fresh folder."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the README's commands in a shell

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"<!-- readme-test:start -->\s*```bash\n(.*?)```\s*<!-- readme-test:end -->", text, re.S)
    assert block, "README lost its tested quick-start block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_make_demo_and_test():
    head = README.read_text().split("```")[1]
    assert "make demo" in head and "make test" in head


def test_readme_quick_start_runs(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONWARNINGS": "ignore"}
    for cmd in readme_commands():
        cmd = re.sub(r"^python ", f"{sys.executable} ", cmd)
        p = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{cmd}\n{p.stderr[-2000:]}"
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert re.search(r"\(4, \d+, \d+, \d+\)", p.stdout), p.stdout
