"""The bundle contract: the typed manifest, its JSON Schema, format versions, and integrity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import cmrt
from cmrt.bundle import FORMAT_VERSION, MANIFEST, Bundle, Manifest, manifest_schema, upgrade_bundle
from cmrt.cli import main

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"
V1 = Path(__file__).resolve().parent / "data" / "manifest_v1.json"  # written by cmrt 0.1.0's first landing


def _copy(bundle, tmp_path, name="b") -> Path:
    dest = tmp_path / name
    shutil.copytree(bundle.path, dest)
    return dest


def test_shipped_schema_is_the_generated_one():
    """docs/manifest.schema.json is generated from the dataclasses (`python -m cmrt.bundle`)."""
    assert json.loads(SCHEMA.read_text()) == manifest_schema()


@pytest.mark.parametrize("fixture", ["cm16", "decoder_bundle"])
def test_manifests_validate_against_the_schema(request, fixture):
    jsonschema = pytest.importorskip("jsonschema")
    data = json.loads((request.getfixturevalue(fixture).path / MANIFEST).read_text())
    jsonschema.validate(data, manifest_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data | {"schedule": {**data["schedule"], "steps": "two"}}, manifest_schema())


def test_round_trip_is_lossless(cm16):
    data = json.loads((cm16.path / MANIFEST).read_text())
    assert Manifest.from_dict(data).to_dict() == data


@pytest.mark.parametrize("change,match", [
    (lambda d: d | {"format_version": FORMAT_VERSION + 1}, "newer than this cmrt understands"),
    (lambda d: d | {"format_version": 1}, "cmrt upgrade"),
    (lambda d: d | {"surprise": 1}, r"unknown fields \['surprise'\]"),
    (lambda d: d | {"schedule": {**d["schedule"], "steps": "two"}}, "schedule.steps: expected an integer"),
    (lambda d: {k: v for k, v in d.items() if k != "graphs"}, "graphs: is missing"),
    (lambda d: d | {"kind": "painter"}, "kind"),
])
def test_bad_manifests_are_refused_naming_the_field(cm_bundle, tmp_path, change, match):
    b = _copy(cm_bundle, tmp_path)
    data = json.loads((b / MANIFEST).read_text())
    (b / MANIFEST).write_text(json.dumps(change(data)))
    with pytest.raises(cmrt.BundleError, match=match):
        Bundle.open(b)


def _files(bundle_dir: Path) -> list[Path]:
    return sorted(p for p in bundle_dir.iterdir() if p.is_file())


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_any_file_is_reported_by_check(cm16, tmp_path, capsys):
    """One flipped bit, anywhere: the graphs, their weights, the parity data and the manifest."""
    names = [p.name for p in _files(cm16.path)]
    assert {"cmrt.json", "model.onnx", "model.onnx.data", "model.fp16.onnx", "model.fp16.onnx.data",
            "parity.npz"} <= set(names)
    for name in names:
        for at in ((0.1, 0.5, 0.9) if name == MANIFEST else (0.5,)):
            b = _copy(cm16, tmp_path, f"{name}-{at}")
            _flip(b / name, at)
            code = main(["check", str(b)])
            out = capsys.readouterr()
            assert code in (1, 2), (name, at, out)
            if code == 1:  # the manifest still reads: the integrity report names what changed
                assert "integrity" in out.out and "FAIL" in out.out, (name, at, out.out)
                assert name in out.out, (name, at, out.out)
            else:  # the manifest no longer reads: one line naming it
                assert len(out.err.strip().splitlines()) == 1 and MANIFEST in out.err, (name, at, out.err)


def test_check_passes_on_an_intact_bundle_and_says_so(cm_bundle, capsys):
    assert main(["check", str(cm_bundle.path)]) == 0
    out = capsys.readouterr().out
    assert "integrity:" in out and "ok" in out and "PASS" in out


def test_open_checks_sizes_and_is_quiet(cm_bundle, tmp_path, capfd):
    """A truncated weight file is refused when the bundle is opened, with no ONNX Runtime log."""
    b = _copy(cm_bundle, tmp_path)
    data = b / "model.onnx.data"
    intact = data.read_bytes()
    data.write_bytes(intact[:1000])
    with pytest.raises(cmrt.IntegrityError, match="model.onnx.data has 1000 bytes"):
        cmrt.Sampler(b)
    assert capfd.readouterr().err == ""
    data.write_bytes(intact)
    (b / "parity.npz").unlink()
    with pytest.raises(cmrt.BundleNotFoundError, match="parity.npz is listed"):
        Bundle.open(b)


def test_verify_reports_every_changed_file(cm_bundle, tmp_path):
    b = _copy(cm_bundle, tmp_path)
    _flip(b / "model.onnx")
    _flip(b / "parity.npz", 0.7)
    report = Bundle.open(b).verify()
    assert not report and len(report.problems) == 2
    with pytest.raises(cmrt.IntegrityError):
        report.raise_if_failed()


def _v1_for(bundle_dir: Path) -> dict:
    """The version-1 manifest cmrt 0.1.0 wrote for this tiny model, pointed at this copy's graphs
    (version 1 recorded each graph file's SHA-256; the rest of it is as written then)."""
    from cmrt._io import sha256_file

    data = json.loads(V1.read_text())
    for g in data["graphs"].values():
        g["sha256"] = sha256_file(bundle_dir / g["file"])
    return data


def test_version_1_bundle_is_refused_then_upgraded(cm16, tmp_path, capsys):
    b = _copy(cm16, tmp_path)
    (b / MANIFEST).write_text(json.dumps(_v1_for(b)))
    with pytest.raises(cmrt.BundleError, match=f"cmrt upgrade {b}"):
        cmrt.Sampler(b)
    assert main(["upgrade", str(b)]) == 0
    assert "manifest format 2" in capsys.readouterr().out
    m = Bundle.open(b).manifest
    assert m.format_version == FORMAT_VERSION and m.schedule.steps == 2 and "fp16" in m.precision
    assert cmrt.check(b).passed and cmrt.check(b / "model.fp16.onnx").passed
    assert main(["upgrade", str(b)]) == 0  # a current bundle is left as it is


def test_upgrade_refuses_a_graph_changed_since_version_1(cm16, tmp_path):
    b = _copy(cm16, tmp_path)
    data = _v1_for(b)
    _flip(b / "model.onnx")
    (b / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(cmrt.IntegrityError, match="re-export"):
        upgrade_bundle(b)
    assert json.loads((b / MANIFEST).read_text())["format_version"] == 1  # nothing written
