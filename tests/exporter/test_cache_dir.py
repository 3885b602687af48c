"""Where traced network graphs are cached: the ``networks`` folder of cmrt's cache root
(``$CMRT_CACHE_DIR``, else ``$XDG_CACHE_HOME/cmrt``, else ``~/.cache/cmrt``)."""

from pathlib import Path

from cmrt.exporter.trace import CACHE_ENV, network_cache_dir


def test_network_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert network_cache_dir() == tmp_path / "c" / "networks"
    monkeypatch.delenv(CACHE_ENV)
    assert network_cache_dir() == tmp_path / "xdg" / "cmrt" / "networks"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert network_cache_dir() == Path(tmp_path / "home" / ".cache" / "cmrt" / "networks")
