"""Editing bundles end to end: export → ``cmrt check`` → ``cmrt.Editor.edit``, per task; the
manifest's record; seeds; FP16 graphs; a TensorRT-RTX engine built on the CPU; the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cmrt
from cmrt import editing as E
from cmrt.exporter.api import build_unrolled
from cmrt.parity import TOLERANCES, psnr
from tests.editing.conftest import EDITOR_BUNDLES, FACTOR, rgb_model

FP32 = TOLERANCES["fp32"].max_abs
IMAGE = ("batch", 3, 16, 16)
IMAGE_INPUTS = {"edit_inpaint": IMAGE, "edit_colorize": ("batch", 1, 16, 16), "edit_superres": ("batch", 3, 4, 4),
                "edit_stroke": IMAGE, "edit_denoise": IMAGE}


def _edit_parity_inputs(editor, bundle, **options):
    inputs, _ = bundle.parity_data()
    noise = [inputs[n] for n in bundle.manifest.noise_names]
    return editor.edit(inputs["image"], mask=inputs.get("mask"), class_labels=inputs["class_labels"],
                       noise=noise or None, **options)


def assert_known_part(task: str, out, inputs, tol: float = 1e-5) -> None:
    """The output agrees with the task's known part (issue 11 targets)."""
    out = np.asarray(out)
    if task == "inpaint":
        assert np.abs((out - inputs["image"]) * (1 - inputs["mask"])).max() <= 1e-6
    elif task == "colorize":
        assert np.abs(E.luma(out) - inputs["image"]).max() <= tol
    elif task == "superres":
        assert np.abs(E.block_mean(torch.from_numpy(out), FACTOR).numpy() - inputs["image"]).max() <= tol


@pytest.mark.parametrize("name", list(EDITOR_BUNDLES))
def test_export_check_edit_round_trip(name, request):
    bundle = request.getfixturevalue(name)
    m, options = bundle.manifest, EDITOR_BUNDLES[name]
    task = options["task"]
    assert (m.kind, m.task.name, m.task.factor) == ("editor", task, options.get("factor"))
    steps = len(options["sigmas"]) if "sigmas" in options else options["steps"]
    assert m.steps == len(m.schedule.sigmas) == steps and m.num_classes == 10
    names = ["image"] + (["mask"] if task == "inpaint" else []) + ["class_labels"]
    assert m.input_names == names + ([] if task == "denoise" else [f"noise_{i}" for i in range(steps)])
    shapes = {i.name: i.shape for i in m.inputs}
    assert shapes["image"] == IMAGE_INPUTS[name] and m.outputs[0].shape == IMAGE
    assert shapes.get("mask", ("batch", 1, 16, 16)) == ("batch", 1, 16, 16)
    assert m.parity["onnxruntime-cpu/fp32"].passed
    assert cmrt.check(bundle.path).passed  # unchanged `cmrt check`
    inputs, outputs = bundle.parity_data()
    with cmrt.Editor(bundle.path) as editor:
        assert editor.task == task
        got = _edit_parity_inputs(editor, bundle)
    assert got.shape == (2, 3, 16, 16) and np.abs(got - outputs["images"]).max() <= FP32
    assert_known_part(task, got, inputs)
    assert_known_part(task, outputs["images"], inputs)


def test_manifest_records_task_schedule_and_parity_inputs(edit_stroke, edit_superres, edit_inpaint):
    s = edit_stroke.manifest.schedule
    assert s.sigmas[0] == pytest.approx(5.0) and s.rule.endswith("from σ = 5 (stroke)") and s.clip
    assert edit_superres.manifest.task == cmrt.bundle.Task("superres", FACTOR)
    inputs, _ = edit_inpaint.parity_data()
    assert set(np.unique(inputs["mask"])) == {0.0, 1.0} and 0 < inputs["mask"].mean() < 1  # 0/1 boxes
    assert inputs["image"].min() >= -1 and inputs["image"].max() <= 1 and inputs["image"].std() > 0.3
    low, _ = edit_superres.parity_data()
    assert low["image"].shape == (2, 3, 4, 4) and np.abs(low["image"]).max() <= 1


@pytest.mark.parametrize("name", ["edit_inpaint", "edit_colorize"])
def test_seeded_edit_equals_pytorch_with_the_same_draws(name, request):
    """seed=s: one whole-batch noise tensor per step, in step order, then the labels, from
    torch.Generator().manual_seed(s); the result equals the PyTorch editor on those draws."""
    bundle = request.getfixturevalue(name)
    m = bundle.manifest
    module = build_unrolled(rgb_model(), m.schedule, m.task)
    inputs, _ = bundle.parity_data()
    image = torch.from_numpy(inputs["image"][:1]).repeat(3, 1, 1, 1)
    extra = {"mask": torch.from_numpy(inputs["mask"][:1]).repeat(3, 1, 1, 1)} if "mask" in inputs else {}
    with cmrt.Editor(bundle.path) as editor:
        a = editor.edit(image, seed=7, **extra)
        b = editor.edit(image.numpy(), seed=7, **{k: v.numpy() for k, v in extra.items()})
        c = editor.edit(image, seed=8, **extra)
        labelled = editor.edit(image, seed=7, class_labels=2, **extra)
    assert isinstance(a, torch.Tensor) and isinstance(b, np.ndarray) and np.array_equal(a.numpy(), b)
    assert np.abs(a.numpy() - c.numpy()).max() > 1e-3
    g = torch.Generator().manual_seed(7)
    noise = [torch.randn(3, 3, 16, 16, generator=g) for _ in range(m.steps)]
    labels = torch.randint(0, 10, (3,), generator=g)
    with torch.no_grad():
        want = module(image, *extra.values(), labels, *noise)
        want2 = module(image, *extra.values(), torch.full((3,), 2), *noise)
    assert float((a - want).abs().max()) <= FP32 and float((labelled - want2).abs().max()) <= FP32


def test_fp16_editing_graph(edit_inpaint):
    m = edit_inpaint.manifest
    assert "fp16" in m.graphs and m.parity["onnxruntime-cpu/fp16"].passed
    assert m.precision["fp16"].nodes.fp16 > 0
    report = cmrt.check(edit_inpaint.graph_path("fp16"))
    assert report.passed and report.parity.precision == "fp16"
    inputs, outputs = edit_inpaint.parity_data()
    with cmrt.Editor(edit_inpaint.graph_path("fp16")) as editor:
        got = _edit_parity_inputs(editor, edit_inpaint)
    assert np.isfinite(got).all() and psnr(got, outputs["images"]) >= TOLERANCES["fp16"].min_psnr
    assert np.abs(got - outputs["images"]).max() <= TOLERANCES["fp16"].max_abs
    assert_known_part("inpaint", got, inputs)  # the projection runs in FP32: the kept part stays exact


def test_profile_shapes_of_editors(edit_inpaint, edit_superres, edit_colorize):
    from cmrt import tensorrt as T

    p = T.ProfileSpec(batch=(1, 2, 4))
    s = T.profile_shapes(edit_inpaint.manifest, p)
    assert s["image"] == ((1, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16))
    assert s["mask"] == ((1, 1, 16, 16), (2, 1, 16, 16), (4, 1, 16, 16)) and s["class_labels"] == ((1,), (2,), (4,))
    assert s["noise_1"] == s["image"]
    assert T.profile_shapes(edit_superres.manifest, p)["image"][2] == (4, 3, 4, 4)
    assert T.profile_shapes(edit_colorize.manifest, p)["image"][0] == (1, 1, 16, 16)


@pytest.mark.trt
def test_rtx_engine_builds_for_an_editing_graph(edit_inpaint, bundle_copy):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is installed by `make setup` (extra trt-rtx)")
    from cmrt import tensorrt as T

    bundle = bundle_copy(edit_inpaint, "inpaint-engine")
    profile = T.ProfileSpec(batch=(1, 2, 4))
    record = T.build(bundle.path, target="tensorrt-rtx", profile=profile, compute_capabilities=["8.6"])
    plan = bundle.path / record.file
    assert plan.is_file() and plan.stat().st_size == record.bytes > 0
    assert record.validity.header_ok and record.strongly_typed
    shapes = T.profile_shapes(bundle.manifest, profile)
    assert [{k: (r.min, r.opt, r.max) for k, r in p.items()} for p in record.profiles] == [shapes]
    assert cmrt.bundle.Bundle.open(plan).manifest.kind == "editor"


def test_concurrent_edits_equal_serial_edits(edit_inpaint):
    """One Editor, four threads, each its own seed: exactly the serial results."""
    import threading

    inputs, _ = edit_inpaint.parity_data()
    with cmrt.Editor(edit_inpaint.path) as editor:
        jobs = [lambda k=k: editor.edit(inputs["image"], mask=inputs["mask"], seed=k) for k in range(8)]
        serial = [job() for job in jobs]
        results: list = [None] * len(jobs)

        def worker(idx: list[int]) -> None:
            for i in idx:
                results[i] = jobs[i]()
        pool = [threading.Thread(target=worker, args=(list(range(t, len(jobs), 4)),)) for t in range(4)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=300)
    assert all(r is not None and np.array_equal(r, s) for r, s in zip(results, serial))
