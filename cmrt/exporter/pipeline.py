"""Export a diffusers text-to-image folder (LCM, SD + LCM-LoRA, SDXL) to a pipeline bundle.

```
bundle/
  pipeline.json            PipelineManifest: stages, tokenizers, schedule, parity, digest
  tokenizer/ (tokenizer_2/) the tokenizer files, copied
  text_encoder.onnx        input_ids → prompt_embeds (SDXL's second: also pooled)
  sampler.onnx (+ .data)   the K-step LCM sampler, unrolled: embeddings, guidance_scale, noise_0..K-1 → latents
  decoder.onnx (+ .data)   latents → images in [-1, 1] (the folder's VAE), or decoder/: a consistency
                           decoder bundle (``--decoder``), as ``cmrt export`` writes one
  parity/<stage>.npz       each stage's stored inputs and PyTorch outputs
```

Every stage is compared with its PyTorch source on ONNX Runtime (CPU) at export, on realistic
inputs (the real text encoder's embeddings, the real sampler's latents); a failed check raises
``ParityError`` and leaves nothing behind (``staged_dir``). On a CPU with native BF16 and OpenVINO
installed, every graph stage's ``openvino-bf16`` run is then recorded in ``pipeline.json``
(``cmrt.runtime.stages.record_at_export``; a failed one is recorded, never chosen, and the export
stands).

The graphs are traced with torch.onnx's TorchScript exporter: on a tiny 4-step LCM the dynamo
exporter took 244 s plus 145 s of optimization here and put a guard of batch ≤ 63 on the UNet's
attention; the TorchScript trace took 33 s and matched PyTorch to 2e-5 at other sizes and batches.
"""

from __future__ import annotations

import datetime as _dt
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .._io import release_memory, sha256_file, sha256_path, staged_dir
from ..bundle import (FileRecord, GraphRecord, ParityRecord, PipelineManifest, SourceInfo, StageRecord,
                      TensorSpec, TokenizerRecord, save_parity)
from ..errors import ConfigError
from ..parity import compare
from ..pipelines.load import PipelineParts, load_pipeline
from ..pipelines.modules import (LCMStepGraph, SamplerLayout, TextEncoderStage, UnrolledLCM, VaeDecoderStage,
                                 any_latent_size)
from ..runtime.stages import record_at_export as record_stages_at_export
from .onnx import describe_io, save_one_data_file

PIPELINE_OPSET = 17  # the TorchScript exporter's well-trodden opset; TensorRT and ORT parse it
PARITY_PROMPTS = ("a photograph of an astronaut riding a horse", "a red cube")
PARITY_GUIDANCE = {"embedding": (8.5, 2.0), "cfg": (1.5, 3.0)}
PARITY_LATENT_HW = (5, 7)  # odd and not square: the UNet's upsample-size path and any aspect
PARITY_SEED = 0
DEFAULT_STEPS = 4
FEATURES = "fp32-features"  # embeddings and latents: not bounded like images (cmrt.parity)
INLINE_BELOW = 1024


def export_pipeline(folder: str | Path, *, out: str | Path = "bundle", steps: int | None = None,
                    decoder: str | Path | None = None, lora: str | Path | None = None, lora_scale: float = 1.0,
                    precision: str = "fp32", overwrite: bool = False, embedding: str | Path | None = None,
                    trust: bool = False) -> Path:
    """Export a diffusers text-to-image folder to a pipeline bundle, each stage checked against PyTorch.

    Args:
        folder: a diffusers folder whose ``model_index.json`` names ``LatentConsistencyModelPipeline``,
            ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``.
        out: the bundle folder to write (must not exist or be empty unless ``overwrite``).
        steps: LCM steps K (default 4).
        decoder: a consistency decoder (OpenAI ``decoder.pt`` or a diffusers ``ConsistencyDecoderVAE``
            folder) as the last stage instead of the folder's VAE.
        lora: an LCM-LoRA ``.safetensors`` fused into the UNet at ``lora_scale``.
        precision: "fp16" also writes FP16 sampler and (VAE) decoder graphs (``fp16_stages``), each
            checked end to end against the FP32 PyTorch pipeline with the fp16 tolerances.
        overwrite: replace an existing ``out``.
        embedding, trust: load options of OpenAI's ``decoder.pt`` (``cmrt.export``), with ``decoder``.

    Returns:
        The bundle folder.
    """
    steps = _check_steps(steps)
    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"--precision must be fp32 or fp16, got {precision!r}")
    parts = load_pipeline(folder, lora=lora, lora_scale=lora_scale)
    if steps > parts.lcm.original_inference_steps:
        raise ConfigError(f"--steps must be at most the scheduler's original_inference_steps "
                          f"({parts.lcm.original_inference_steps}), got {steps}")
    if decoder is not None:
        _check_decoder_channels(decoder, parts)
    layout = SamplerLayout(steps, embed_guidance=parts.embed_guidance, xl=parts.family == "sdxl")
    with staged_dir(out, overwrite=overwrite) as tmp:
        _write_stages(parts, layout, folder, tmp, decoder, precision, embedding=embedding, trust=trust)
        del parts  # the PyTorch pipeline, as large as the weights: OpenVINO's compile below needs the room
        release_memory()
        record_stages_at_export(tmp)  # OpenVINO BF16's parity per stage, on a CPU with native BF16
    return Path(out)


def _write_stages(parts: PipelineParts, layout: SamplerLayout, folder: str | Path, tmp: Path,
                  decoder: str | Path | None, precision: str, **decoder_options) -> None:
    """Every stage's graph(s) and parity files, the tokenizers and ``pipeline.json``, into ``tmp``."""
    (tmp / "parity").mkdir()
    tokenizers = tuple(_copy_tokenizer(parts, sub, tmp) for _, _, sub in parts.text_encoders())
    stages, texts = _text_encoder_stages(parts, tmp)
    sampler, latents = _sampler_stage(parts, layout, texts, tmp)
    stages["sampler"] = sampler
    stages["decoder"] = (_consistency_decoder_stage(decoder, tmp, **decoder_options) if decoder is not None
                         else _vae_stage(parts, latents, tmp))
    if precision == "fp16":
        stages |= fp16_stages(stages, parts, tmp, decoder is None)
    _manifest(parts, layout, tokenizers, stages, folder).save(tmp)


def _check_steps(steps) -> int:
    if steps is None:
        return DEFAULT_STEPS
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps must be a positive integer, got {steps!r}")
    return steps


# --- stages -------------------------------------------------------------------------------------
def _text_encoder_stages(parts: PipelineParts, tmp: Path) -> tuple[dict[str, StageRecord], dict[str, dict]]:
    """Each text encoder exported and checked; also its PyTorch outputs for the parity prompts
    and for the empty prompt (negative embeddings), which feed the sampler's check."""
    stages, texts = {}, {}
    xl = parts.family == "sdxl"
    for name, encoder, sub in parts.text_encoders():
        stage = TextEncoderStage(encoder.eval(), hidden_layer=-2 if xl else None, pooled=name == "text_encoder_2")
        tokenizer = getattr(parts.pipe, sub)
        ids = _ids(tokenizer, list(PARITY_PROMPTS))
        outputs = stage.output_names()
        axes = {"input_ids": {0: "batch"}} | {o: {0: "batch"} for o in outputs}
        record, reference = _export_and_check(name, stage, {"input_ids": ids}, outputs, axes, tmp, FEATURES)
        stages[name] = record
        with torch.no_grad():
            empty = stage(_ids(tokenizer, [""] * len(PARITY_PROMPTS)))
        texts[name] = {"cond": reference, "uncond": dict(zip(outputs, _as_tuple(empty)))}
    return stages, texts


def _ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _as_tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def sampler_parity_inputs(parts: PipelineParts, layout: SamplerLayout, texts: dict) -> dict[str, torch.Tensor]:
    """Real embeddings of the parity prompts (and of "" as the negative prompt), a guidance scale
    per image, and standard-normal noise per step at an odd latent size."""
    g = torch.Generator().manual_seed(PARITY_SEED)
    batch = len(PARITY_PROMPTS)
    cond, uncond = _embeddings(texts, "cond"), _embeddings(texts, "uncond")
    feeds = {"prompt_embeds": cond[0]}
    if layout.cfg:
        feeds["negative_prompt_embeds"] = uncond[0]
    if layout.xl:
        feeds["text_embeds"] = cond[1]
        feeds["time_ids"] = _parity_time_ids(parts, batch)
        if layout.cfg:
            feeds["negative_text_embeds"] = uncond[1]
    feeds["guidance_scale"] = torch.tensor(PARITY_GUIDANCE["cfg" if layout.cfg else "embedding"], dtype=torch.float32)
    h, w = PARITY_LATENT_HW
    for i in range(layout.steps):
        feeds[f"noise_{i}"] = torch.randn(batch, parts.unet.config.in_channels, h, w, generator=g)
    return {k: feeds[k] for k in layout.input_names()}


def _embeddings(texts: dict, which: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt_embeds, pooled): SDXL concatenates both encoders' hidden states on the last axis."""
    hidden = [t[which]["prompt_embeds"] for t in texts.values()]
    pooled = texts.get("text_encoder_2", {}).get(which, {}).get("pooled")
    return (hidden[0] if len(hidden) == 1 else torch.cat(hidden, dim=-1)), pooled


def _parity_time_ids(parts: PipelineParts, batch: int) -> torch.Tensor:
    h, w = (parts.vae_scale_factor * n for n in PARITY_LATENT_HW)
    return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).repeat(batch, 1)


def _sampler_stage(parts: PipelineParts, layout: SamplerLayout, texts: dict, tmp: Path):
    """The K-step sampler: one step traced and unrolled in ONNX (``_export_unrolled``), checked
    against the PyTorch K-step sampler."""
    sampler = UnrolledLCM(parts.unet.eval(), parts.lcm, layout).eval()
    feeds = sampler_parity_inputs(parts, layout, texts)
    with any_latent_size(parts.unet):
        record, reference = _export_and_check("sampler", sampler, feeds, ["latents"], {}, tmp, FEATURES,
                                              export=lambda path: _export_unrolled(parts, layout, feeds, path))
    return record, reference["latents"]


def _export_unrolled(parts: PipelineParts, layout: SamplerLayout, feeds: dict[str, torch.Tensor], path: Path) -> None:
    """Trace one sampler step (``LCMStepGraph``) on the first step's inputs and unroll it K times
    (``unroll.unroll``) into ``path``."""
    from .unroll import unroll

    step = LCMStepGraph(parts.unet, parts.lcm, layout).eval()
    values = step.step_values
    conditioning = {k: v for k, v in feeds.items() if not k.startswith("noise_")}
    noise = feeds["noise_0"]
    step_feeds = conditioning | {"x": noise, "noise_next": feeds.get("noise_1", noise).clone()} | values[0]
    spatial = {0: "batch", 2: "h", 3: "w"}
    axes = ({n: {0: "batch"} for n in conditioning} | {"x": spatial, "noise_next": spatial}
            | {o: spatial for o in LCMStepGraph.OUTPUTS})
    constants = [{k: v.numpy() for k, v in d.items()} for d in values]
    _export_onnx(step, step_feeds, list(LCMStepGraph.OUTPUTS), axes, path,
                 transform=lambda model: unroll(model, constants))


def _vae_stage(parts: PipelineParts, latents: torch.Tensor, tmp: Path) -> StageRecord:
    stage = VaeDecoderStage(parts.pipe.vae.eval())
    spatial = {0: "batch", 2: "h", 3: "w"}
    record, _ = _export_and_check("decoder", stage, {"latents": latents}, ["images"],
                                  {"latents": spatial, "images": spatial}, tmp, "fp32")
    return record


def _check_decoder_channels(decoder: str | Path, parts: PipelineParts) -> None:
    from .. import schedules as S

    channels = int(parts.unet.config.out_channels)
    if channels != S.LATENT_CHANNELS or parts.family == "sdxl":
        raise ConfigError(f"--decoder {decoder}: the consistency decoder decodes SD 1.x/2.x latents "
                          f"({S.LATENT_CHANNELS} channels); this {parts.pipeline}'s UNet has {channels} latent "
                          f"channels{' (SDXL latent space)' if parts.family == 'sdxl' else ''}")


def _consistency_decoder_stage(decoder: str | Path, tmp: Path, **options) -> StageRecord:
    """The consistency decoder as its own cmrt decoder bundle in ``decoder/`` (``cmrt.export``,
    parity-checked there); the pipeline divides the sampler's latents by the VAE's scaling factor
    before it, as the pipelines do before ``vae.decode``."""
    from .api import export

    options = {k: v for k, v in options.items() if v not in (None, False)}
    bundle = export(decoder, out=tmp / "decoder", steps=2, **options)
    m = bundle.manifest
    return StageRecord("decoder", None, m.inputs, m.outputs, None, dict(m.parity), bundle="decoder")


# --- FP16 -------------------------------------------------------------------------------------------
def fp16_stages(stages: dict[str, StageRecord], parts: PipelineParts, tmp: Path,
                vae: bool) -> dict[str, StageRecord]:
    """FP16 graphs of the sampler and (``vae``) the VAE decoder, with cmrt's FP16 pass
    (``precision``: calibrate, keep sampler arithmetic, normalization statistics and large values
    in FP32, convert), each verified end to end: FP16 sampler → FP32 decoder, and FP32 sampler
    latents → FP16 decoder, against the FP32 PyTorch images (fp16 tolerances: max abs, PSNR ≥ 40 dB).
    A consistency decoder stage keeps its own bundle's precision (``cmrt export --precision fp16``)."""
    from dataclasses import replace

    sampler_feeds, latents = _stored(tmp, "sampler")
    decoder_feeds, images = _stored(tmp, "decoder") if vae else (None, None)
    out = {"sampler": stages["sampler"]}
    graph = _make_fp16(tmp / "sampler.onnx", "/unet/", [sampler_feeds])
    out_latents = _run_onnx(graph, sampler_feeds, ["latents"])["latents"]
    if vae:
        decoded = _run_onnx(tmp / "decoder.onnx", {"latents": out_latents}, ["images"])
        report = compare(decoded, images, backend="onnxruntime-cpu", precision="fp16")
        out["sampler"] = replace(stages["sampler"], graphs={"fp16": _graph_record(graph, tmp)},
                                 parity={**stages["sampler"].parity, "onnxruntime-cpu/fp16": ParityRecord.of(report)})
        dgraph = _make_fp16(tmp / "decoder.onnx", "/vae/", [decoder_feeds])
        dreport = compare(_run_onnx(dgraph, decoder_feeds, ["images"]), images, backend="onnxruntime-cpu",
                          precision="fp16")
        out["decoder"] = replace(stages["decoder"], graphs={"fp16": _graph_record(dgraph, tmp)},
                                 parity={**stages["decoder"].parity, "onnxruntime-cpu/fp16": ParityRecord.of(dreport)})
        report.raise_if_failed()
        dreport.raise_if_failed()
    else:
        report = compare({"latents": out_latents}, latents, backend="onnxruntime-cpu", precision="fp16")
        out["sampler"] = replace(stages["sampler"], graphs={"fp16": _graph_record(graph, tmp)},
                                 parity={**stages["sampler"].parity, "onnxruntime-cpu/fp16": ParityRecord.of(report)})
        report.raise_if_failed()
    return out


def _stored(tmp: Path, name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(tmp / "parity" / f"{name}.npz", allow_pickle=False) as data:
        inputs = {k[len("input/"):]: data[k] for k in data.files if k.startswith("input/")}
        outputs = {k[len("output/"):]: data[k] for k in data.files if k.startswith("output/")}
    return inputs, outputs


def _make_fp16(fp32: Path, network: str, cases: list[dict[str, np.ndarray]]) -> Path:
    """``<stage>.fp16.onnx`` beside ``fp32``: calibrated (``precision.calibrate``), the network's
    nodes (TorchScript names under ``network``) in FP16 except normalization statistics and values
    beyond ``precision.SAFE_ABS_MAX``; everything outside the network in FP32."""
    import onnx

    from . import precision as P

    model = onnx.load(str(fp32))
    model = onnx.shape_inference.infer_shapes(model)
    _drop_float_to_float_casts(model)
    probe = fp32.with_name(fp32.stem + ".inferred.onnx")
    _save_probe(model, probe)
    try:
        peaks = P.calibrate(probe, cases)
    finally:
        for f in (probe, probe.with_name(probe.name + ".data")):
            f.unlink(missing_ok=True)
    keep = []
    for node in model.graph.node:
        if node.op_type in ("Constant", "Shape", "Cast"):
            continue
        seen = [peaks[t] for t in (*node.input, *node.output) if t in peaks]
        if not node.name.startswith(network) or P.is_normalization(node) or (seen and max(seen) > P.SAFE_ABS_MAX):
            keep.append(node.name)
    keep += _shape_arithmetic(model)
    _unshare_initializers(model, set(keep))
    out = fp32.with_name(fp32.stem + ".fp16.onnx")
    P.save_graph(P.convert(model, keep, io="fp32"), out)
    return out


def _drop_float_to_float_casts(model) -> int:
    """``Cast(to=FLOAT)`` of a tensor that is already FP32 (the UNet's ``t_emb.to(sample.dtype)``)
    becomes ``Identity``: a no-op in the FP32 graph, but onnxconverter-common would keep it casting
    to FP32 inside the FP16 region. Needs the shape-inferred types. Returns how many."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    types |= {i.name: i.data_type for i in model.graph.initializer}
    n = 0
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
        if to == 1 and types.get(node.input[0]) == 1:
            node.op_type = "Identity"
            del node.attribute[:]
            n += 1
    return n


def _shape_arithmetic(model) -> list[str]:
    """Float arithmetic on shapes (attention's 1/√d from ``Cast(shape → FLOAT)``): the converter
    leaves such Casts FP32, so the nodes fed only by them (and constants) stay FP32 too, and
    the converter casts their result where it meets the FP16 region."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    constants |= {i.name for i in model.graph.initializer}
    derived: set[str] = set()
    names = []
    for node in model.graph.node:  # topological order
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to == 1 and types.get(node.input[0]) != 1:
                derived.update(node.output)
            continue
        inputs = [i for i in node.input if i and i not in constants]
        if inputs and all(i in derived for i in inputs) and node.op_type not in ("Shape",):
            derived.update(node.output)
            names.append(node.name)
    return names


def _unshare_initializers(model, keep: set[str]) -> None:
    """Give FP32-kept nodes their own copy of an initializer they share with FP16 nodes: the
    TorchScript exporter folds equal constants into one (e.g. the GroupNorm weights of ones), and
    the converter leaves a shared initializer FP32 without a Cast for its FP16 consumers."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                users.setdefault(name, []).append(node)
    for name, nodes in users.items():
        kept = [n for n in nodes if n.name in keep]
        if not kept or len(kept) == len(nodes):
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[name])
        copy.name = f"{name}.fp32"
        model.graph.initializer.append(copy)
        for node in kept:
            for i, x in enumerate(node.input):
                if x == name:
                    node.input[i] = copy.name


def _save_probe(model, path: Path) -> None:
    """Save a copy (saving with external data moves the weights out of the saved proto)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=INLINE_BELOW)


def _graph_record(path: Path, tmp: Path) -> GraphRecord:
    files = tuple(_file_record(f, tmp) for f in (path, path.with_name(path.name + ".data")) if f.exists())
    return GraphRecord(path.name, files, PIPELINE_OPSET, io="fp32")


# --- export + check -------------------------------------------------------------------------------
def _export_and_check(name: str, module: torch.nn.Module, feeds: dict[str, torch.Tensor], outputs: list[str],
                      axes: dict, tmp: Path, precision: str, *,
                      export: Callable[[Path], None] | None = None) -> tuple[StageRecord, dict[str, torch.Tensor]]:
    """Export ``module`` to ``tmp/<name>.onnx`` (or have ``export(path)`` write that graph), run it
    on ONNX Runtime with ``feeds`` and compare with ``module`` in PyTorch; the stage's record
    (raises ``ParityError`` after writing it when out of tolerance)."""
    path = tmp / f"{name}.onnx"
    t0 = time.perf_counter()
    if export is None:
        _export_onnx(module, feeds, outputs, axes, path)
    else:
        export(path)
    seconds = round(time.perf_counter() - t0, 2)
    with torch.no_grad():
        reference = dict(zip(outputs, _as_tuple(module(*feeds.values()))))
    actual = _run_onnx(path, {k: v.numpy() for k, v in feeds.items()}, outputs)
    report = compare(actual, {k: v.numpy() for k, v in reference.items()}, backend="onnxruntime-cpu",
                     precision=precision)
    save_parity(tmp / "parity" / f"{name}.npz", {k: v.numpy() for k, v in feeds.items()},
                              {k: v.numpy() for k, v in reference.items()})
    files = tuple(_file_record(f, tmp) for f in (path, path.with_name(path.name + ".data")) if f.exists())
    graph = GraphRecord(path.name, files, PIPELINE_OPSET, export_seconds=seconds)
    inputs, outs = describe_io(path)
    record = StageRecord(name, graph, inputs, outs, _file_record(tmp / "parity" / f"{name}.npz", tmp),
                         {f"onnxruntime-cpu/{precision}": ParityRecord.of(report)})
    report.raise_if_failed()
    return record, reference


def _export_onnx(module: torch.nn.Module, feeds: dict[str, torch.Tensor], outputs: list[str], axes: dict,
                 path: Path, transform: Callable | None = None) -> None:
    """TorchScript-trace ``module`` to ONNX (opset ``PIPELINE_OPSET``), apply ``transform`` to the
    ``ModelProto`` if given, then store its weights in ``<path>.data`` (tensors of ``INLINE_BELOW``
    bytes or more)."""
    import onnx

    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        raw = Path(scratch) / path.name
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), tuple(feeds.values()), str(raw), input_names=list(feeds),
                              output_names=outputs, dynamic_axes=axes, opset_version=PIPELINE_OPSET, dynamo=False,
                              do_constant_folding=True)
        model = onnx.load(str(raw), load_external_data=False)  # the weights stay in the exporter's files
        if transform is not None:
            model = transform(model)
        save_one_data_file(model, path, source=Path(scratch), inline_below=INLINE_BELOW)
    onnx.checker.check_model(str(path), full_check=False)


def _run_onnx(path: Path, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    from ..runtime.backends import session_options

    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    return dict(zip(outputs, session.run(outputs, feeds)))


def _file_record(path: Path, root: Path) -> FileRecord:
    return FileRecord(str(path.relative_to(root)), path.stat().st_size, sha256_file(path))


def _copy_tokenizer(parts: PipelineParts, sub: str, tmp: Path) -> TokenizerRecord:
    """The tokenizer's files as diffusers saves them (``save_pretrained``), into ``tmp/sub``."""
    tokenizer = getattr(parts.pipe, sub)
    target = tmp / sub
    tokenizer.save_pretrained(str(target))
    files = tuple(_file_record(f, tmp) for f in sorted(target.rglob("*")) if f.is_file())
    return TokenizerRecord(sub, int(tokenizer.model_max_length), files)


def _manifest(parts: PipelineParts, layout: SamplerLayout, tokenizers: Sequence[TokenizerRecord],
              stages: dict[str, StageRecord], folder: str | Path) -> PipelineManifest:
    from dataclasses import asdict

    from .api import _versions

    from ..pipelines.lcm import lcm_steps

    h, w = parts.default_size
    timesteps = tuple(s.t for s in lcm_steps(parts.lcm, layout.steps))
    return PipelineManifest(
        pipeline=parts.pipeline, family=parts.family, steps=layout.steps, timesteps=timesteps,
        guidance="embedding" if layout.embed_guidance else "cfg", default_guidance_scale=parts.default_guidance_scale,
        default_height=h, default_width=w, vae_scale_factor=parts.vae_scale_factor,
        vae_scaling_factor=float(parts.pipe.vae.config.scaling_factor),
        latent_channels=int(parts.unet.config.in_channels), force_zeros_for_empty_prompt=parts.force_zeros_for_empty_prompt,
        tokenizers=tuple(tokenizers), stages=stages,
        scheduler={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(parts.lcm).items()},
        lora=parts.lora, source=SourceInfo(str(folder), sha256_path(folder), "diffusers-pipeline",
                                           {"class": parts.pipeline}),
        versions=_versions(), created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


__all__ = ["export_pipeline", "sampler_parity_inputs", "PARITY_PROMPTS", "DEFAULT_STEPS"]
