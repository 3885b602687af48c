"""``cmrt eval``: sample quality of a training run or a bundle.

- digits (class-conditional samplers; RGB ``digits-color`` ones by the strokes of their painted
  digits, ``digit_strokes``): class-balanced sets pooled back to 8×8 and scored by the
  Fréchet distance in a 20-component PCA space of the real 8×8 digits (scikit-learn's 0..16
  units), the Fréchet distance in the features of cmrt's shipped digit classifier, the class
  accuracy that classifier reads, and the within-class variety (mean per-class total variance)
  relative to the real digits. Two disjoint real sets give the reference distances.
- 2-D toys: the sliced Wasserstein distance to fresh data.
- decoders: PSNR and sharpness (mean gradient magnitude, relative to the originals) of
  reconstructions of held-out images.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import schedules as S
from ..errors import InputError, SourceError, require
from ..parity import psnr_per_image
from ..samplers import consistency_sample, decoder_sample, heun_sample
from .data import DIGITS_CLASSES, DIGITS_LEVELS, DIGITS_SIDE, digits_8x8, load_toy, pool_to_8x8
from .methods import configure
from .sharpness import sharpness

PCA_COMPONENTS = 20
CLASSIFIER = Path(__file__).resolve().parent.parent / "assets" / "digits_classifier.safetensors"
CLASSIFIER_KEY = "cmrt.classifier"
CLASSIFIER_HIDDEN = (128, 64)
CLASSIFIER_EPOCHS = 300
CLASSIFIER_LR = 3e-3
CLASSIFIER_WEIGHT_DECAY = 1e-4
SWD_PROJECTIONS = 256
TOY_SAMPLES = 2000
HEUN_STEPS = 18  # the EDM teacher's evaluation sampler (35 network evaluations)
EDM_SIGMA_MIN = 0.002
EDM_SIGMA_MAX = 80.0


# --- distances ---------------------------------------------------------------------------------
def psd_eigh(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of a symmetric positive semi-definite matrix, with the eigenvalues
    that are zero up to round-off (below D·ε·λ_max, and the negative ones) set to 0."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    w[w < max(w.max(), 0.0) * len(w) * np.finfo(w.dtype).eps] = 0.0
    return w, v


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr((Σ_a Σ_b)^½) of two covariance matrices.

    Σ_a Σ_b is similar to the symmetric Σ_a^½ Σ_b Σ_a^½, so the trace is the sum of the square roots of
    that matrix's eigenvalues (torchmetrics' FID takes the eigenvalues of Σ_a Σ_b). Exact also when the
    covariances are singular (fewer samples than features, dead features), where the square root of the
    product (scipy's ``sqrtm``, as pytorch-fid) warns that the matrix is singular and may be inaccurate,
    and pytorch-fid's remedy, ε·I added to both covariances, changes the figure.
    """
    w, v = psd_eigh(cov_a)
    root_a = (v * np.sqrt(w)) @ v.T
    lam, _ = psd_eigh(root_a @ cov_b @ root_a)
    return float(np.sqrt(lam).sum())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½) of two sample sets (N, D)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean_trace = trace_sqrt_product(cov_a, cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * covmean_trace)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, projections: int = SWD_PROJECTIONS, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance of two equal-size point sets (N, D)."""
    if len(a) != len(b):
        raise InputError(f"sliced Wasserstein needs equal set sizes, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(projections, a.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    pa, pb = np.sort(a @ dirs.T, axis=0), np.sort(b @ dirs.T, axis=0)
    return float(np.abs(pa - pb).mean())


# --- the digit classifier (trained by cmrt, shipped in assets/) -----------------------------------
class DigitClassifier(nn.Module):
    """An MLP on 8×8 digits in [0, 1]: ``features`` (the last hidden layer) and ``forward`` logits."""

    def __init__(self, hidden: tuple[int, ...] = CLASSIFIER_HIDDEN) -> None:
        super().__init__()
        dims = (DIGITS_SIDE * DIGITS_SIDE, *hidden)
        self.body = nn.Sequential(*[m for i in range(len(hidden)) for m in (nn.Linear(dims[i], dims[i + 1]), nn.ReLU())])
        self.head = nn.Linear(hidden[-1], DIGITS_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(out: Path = CLASSIFIER, *, seed: int = 0, held_out: float = 0.2) -> dict:
    """Train the digit classifier on 80% of the digits; report held-out accuracy; save it."""
    from safetensors.torch import save_file

    images, labels = digits_8x8()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    cut = int(len(images) * (1 - held_out))
    x = torch.tensor(images.reshape(len(images), -1))
    y = torch.tensor(labels)
    tr, te = order[:cut], order[cut:]
    torch.manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=CLASSIFIER_LR, weight_decay=CLASSIFIER_WEIGHT_DECAY)
    for _ in range(CLASSIFIER_EPOCHS):
        loss = F.cross_entropy(model(x[tr]), y[tr])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((model(x[te]).argmax(1) == y[te]).float().mean())
    report = {"held_out_accuracy": acc, "train_images": len(tr), "held_out_images": len(te), "seed": seed}
    tmp = Path(out).with_name(f".{Path(out).name}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={CLASSIFIER_KEY: json.dumps({"hidden": list(CLASSIFIER_HIDDEN)} | report)})
    tmp.replace(out)
    return report


def load_classifier(path: Path = CLASSIFIER) -> DigitClassifier:
    from safetensors.torch import load_file

    from ..models.load import read_checkpoint_metadata

    if not path.is_file():
        raise SourceError(f"{path} is missing: run `python -m cmrt.train.eval --train-classifier`")
    meta = json.loads(read_checkpoint_metadata(path)[CLASSIFIER_KEY])
    model = DigitClassifier(tuple(meta["hidden"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


# --- digits scoring ---------------------------------------------------------------------------
def digit_strokes(rgb: np.ndarray | torch.Tensor) -> np.ndarray:
    """Painted RGB digits (N, 3, H, W) → their strokes (N, 1, H, W) in [-1, 1].

    A ``digits-color`` image is bg + (fg − bg)·m per pixel: the background colour is the median of
    the border pixels, the foreground the pixel farthest from it, and m the projection onto the
    line between them.
    """
    x = torch.as_tensor(np.asarray(rgb), dtype=torch.float64)
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    bg = border.median(dim=-1).values[..., None, None]  # (N, 3, 1, 1)
    dist = ((x - bg) ** 2).sum(1).flatten(1)
    far = dist.argmax(1)
    fg = x.flatten(2)[torch.arange(len(x)), :, far][..., None, None]
    d = fg - bg
    m = ((x - bg) * d).sum(1, keepdim=True) / (d * d).sum(1, keepdim=True).clamp_min(1e-12)
    return (m.clamp(0, 1) * 2 - 1).float().numpy()


def balanced_real_sets(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two disjoint class-balanced real sets (N, 64) in [0, 1] and their labels."""
    images, labels = digits_8x8()
    rng = np.random.default_rng(seed)
    a, b = [], []
    for k in range(DIGITS_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == k))
        if len(idx) < 2 * n_per_class:
            raise InputError(f"--n-per-class {n_per_class}: class {k} has only {len(idx)} real digits (need twice)")
        a += list(idx[:n_per_class])
        b += list(idx[n_per_class:2 * n_per_class])
    flat = images.reshape(len(images), -1)
    return flat[a], flat[b], labels[a]


def within_class_variety(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the total variance (trace of the covariance) of (N, 64) images."""
    return float(np.mean([x[labels == k].var(0).sum() for k in np.unique(labels)]))


@dataclass
class DigitScores:
    fd_pca: float
    fd_classifier: float
    accuracy: float
    variety_ratio: float

    def ratio(self, real_fd: float) -> float:
        return self.fd_pca / real_fd


def score_digits(samples01: np.ndarray, labels: np.ndarray, reference: np.ndarray, ref_labels: np.ndarray,
                 classifier: DigitClassifier) -> DigitScores:
    """Scores of (N, 64) samples in [0, 1] against a real reference set."""
    pca = require("sklearn.decomposition", "train", "the PCA Fréchet distance").PCA(PCA_COMPONENTS, random_state=0)
    images, _ = digits_8x8()
    pca.fit(images.reshape(len(images), -1) * DIGITS_LEVELS)
    fd_pca = frechet_distance(pca.transform(samples01 * DIGITS_LEVELS), pca.transform(reference * DIGITS_LEVELS))
    with torch.no_grad():
        fs, fr = (classifier.features(torch.tensor(v, dtype=torch.float32)).numpy() for v in (samples01, reference))
        pred = classifier(torch.tensor(samples01, dtype=torch.float32)).argmax(1).numpy()
    variety = within_class_variety(samples01, labels) / within_class_variety(reference, ref_labels)
    return DigitScores(fd_pca, frechet_distance(fs, fr), float((pred == labels).mean()), variety)


# --- sampling a source ---------------------------------------------------------------------------
def edm_heun_sample(denoiser: nn.Module, noise: torch.Tensor, labels: torch.Tensor | None,
                    steps: int = HEUN_STEPS) -> torch.Tensor:
    """EDM's deterministic Heun sampler on the teacher's Karras grid + σ = 0 (2·steps − 1 evaluations)."""
    sigmas = [*S.karras_sigmas(steps, EDM_SIGMA_MIN, EDM_SIGMA_MAX), 0.0]
    return heun_sample(denoiser, noise, sigmas, labels).clamp(-1, 1)


def sample_source(source: str, steps: int, labels: torch.Tensor, shape: tuple[int, ...], seed: int,
                  sigmas: list[float] | None = None) -> tuple[np.ndarray, str, int]:
    """Samples of a run (torch, EMA weights) or a bundle (its backend): images, a description, evaluations."""
    path = Path(source)
    gen = torch.Generator().manual_seed(seed)
    if (path / "cmrt.json").is_file():
        from ..runtime.sampler import Sampler

        sampler = Sampler(path)
        images = sampler.sample(len(labels), class_labels=labels.numpy(), seed=seed)
        return np.asarray(images), f"bundle ({sampler.steps} steps)", sampler.steps
    from .runs import load_run

    run = load_run(source)
    trained = configure(run.config)
    den = trained.denoiser(run.ema, run.spec)
    with torch.no_grad():
        if not trained.one_step:
            images = edm_heun_sample(den, torch.randn(shape, generator=gen), labels).numpy()
            return images, f"EDM Heun {HEUN_STEPS} steps", 2 * HEUN_STEPS - 1
        sigmas = sigmas or S.default_cm_sigmas(steps, run.spec.grid_size, run.spec.sigma_min, run.spec.sigma_max)
        steps = len(sigmas)
        noise = [torch.randn(shape, generator=gen) for _ in range(steps)]
        out = consistency_sample(den, sigmas, noise, labels, sigma_min=run.spec.sigma_min, clip=run.spec.clip)
        return out.numpy(), f"{steps} step(s), σ {', '.join(f'{s:.4g}' for s in sigmas)}", steps


# --- reports -------------------------------------------------------------------------------------
@dataclass
class EvalReport:
    source: str
    kind: str
    rows: list[dict] = field(default_factory=list)
    reference: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{self.source} ({self.kind})"]
        out += ["  reference: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in self.reference.items())] if self.reference else []
        for r in self.rows:
            out.append("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def _source_kind(source: str) -> tuple[str, str]:
    """(kind, data) of a run or bundle: kind sampler/decoder/points."""
    path = Path(source)
    if (path / "cmrt.json").is_file():
        from ..bundle import Bundle

        manifest = Bundle.open(path).manifest
        return manifest.kind, "digits" if manifest.num_classes == DIGITS_CLASSES else "images"
    from .runs import load_run

    run = load_run(source)
    if run.spec is None:
        return "points", run.config.data
    return run.spec.kind, run.config.data


def evaluate(source: str, *, steps: list[int], n_per_class: int = 30, seed: int = 0,
             grid: Path | None = None, sigmas: list[float] | None = None) -> EvalReport:
    """Score ``source`` (run folder, checkpoint or bundle) at each number of steps.

    Args:
        source: a training run folder or checkpoint, or an exported bundle.
        steps: numbers of sampling steps to score (a bundle or an EDM teacher has one fixed schedule).
        n_per_class: digits: samples per class (and real images per class in each reference set).
        seed: noise seed.
        grid: also write PNG sample grids, ``<grid stem>_<k>step.png`` (None: no grids).
        sigmas: digits runs: score this one σ schedule (e.g. [80, 1.0]) instead of ``steps``' defaults.
    """
    kind, data = _source_kind(source)
    if kind == "points":
        return evaluate_points(source, data, steps, seed)
    if kind == "decoder":
        return evaluate_decoder(source, steps, seed, grid)
    if data not in ("digits", "digits-color"):
        raise InputError(f"{source}: eval scores digits samplers, 2-D toys and decoders (this one was trained on {data!r})")
    return evaluate_digits(source, steps, n_per_class, seed, grid, sigmas)


GRID_PER_CLASS = 8
GRID_SCALE = 3


def _grid_path(grid: Path, k: int) -> Path:
    return grid.with_name(f"{grid.stem}_{k}step.png")


def evaluate_digits(source: str, steps: list[int], n_per_class: int, seed: int, grid: Path | None = None,
                    sigmas: list[float] | None = None) -> EvalReport:
    classifier = load_classifier()
    real_a, real_b, ref_labels = balanced_real_sets(n_per_class, seed)
    real = score_digits(real_b, ref_labels, real_a, ref_labels, classifier)
    report = EvalReport(source, "digits sampler", reference={
        "real_vs_real_fd_pca": real.fd_pca, "real_vs_real_fd_classifier": real.fd_classifier,
        "real_accuracy": real.accuracy, "n": len(ref_labels)})
    labels = torch.tensor(ref_labels)
    meta = _image_shape(source)
    rgb = meta[0] == 3
    if rgb:  # painted digits are scored by their strokes; the same extraction on real ones is the floor
        real_rgb = _painted(ref_labels, meta[1], seed)
        floor = score_digits(pool_to_8x8(digit_strokes(real_rgb)), ref_labels, real_a, ref_labels, classifier)
        report.kind = "RGB digits sampler (scored by its strokes)"
        report.reference |= {"real_painted_fd_pca": floor.fd_pca, "real_painted_fd_classifier": floor.fd_classifier,
                             "real_painted_accuracy": floor.accuracy}
    for k in ([len(sigmas)] if sigmas else steps):
        images, how, nfe = sample_source(source, k, labels, (len(labels), *meta), seed, sigmas)
        s = score_digits(pool_to_8x8(digit_strokes(images) if rgb else images), ref_labels, real_a, ref_labels,
                         classifier)
        if grid is not None:  # rows = classes, GRID_PER_CLASS samples each
            from ..images import save_grid

            pick = np.concatenate([np.flatnonzero(ref_labels == c)[:GRID_PER_CLASS] for c in range(DIGITS_CLASSES)])
            save_grid(images[pick], _grid_path(grid, nfe), cols=GRID_PER_CLASS, scale=GRID_SCALE)
        report.rows.append({"steps": nfe, "sampler": how, "fd_pca": s.fd_pca, "fd_pca_ratio": s.ratio(real.fd_pca),
                            "fd_classifier": s.fd_classifier, "accuracy": s.accuracy, "variety_ratio": s.variety_ratio})
        if how.startswith("EDM") or how.startswith("bundle"):
            break  # the teacher's sampler and a bundle have one fixed schedule
    return report


def _painted(labels: np.ndarray, size: int, seed: int) -> torch.Tensor:
    """``digits-color`` images (one colouring each, of held-out digits first) with these labels."""
    from .data import load_digits_color

    pool = [load_digits_color(split, copies=1, size=size, seed=seed) for split in ("test", "train")]
    x = torch.cat([p.x for p in pool])
    y = torch.cat([p.labels for p in pool]).numpy()
    idx = np.concatenate([np.flatnonzero(y == k)[:int((labels == k).sum())] for k in range(DIGITS_CLASSES)])
    return x[idx]


def _image_shape(source: str) -> tuple[int, int, int]:
    path = Path(source)
    if (path / "cmrt.json").is_file():
        img = json.loads((path / "cmrt.json").read_text())["image"]
        return img["channels"], img["height"], img["width"]
    from .runs import load_run

    spec = load_run(source).spec
    return spec.image_channels, spec.image_size, spec.image_size


def evaluate_points(source: str, data: str, steps: list[int], seed: int) -> EvalReport:
    from .runs import load_run

    run = load_run(source)
    ref = load_toy(data, TOY_SAMPLES, seed=seed + 1).x.numpy()
    other = load_toy(data, TOY_SAMPLES, seed=seed + 2).x.numpy()
    report = EvalReport(source, f"2-D {data}", reference={"data_vs_data_swd": sliced_wasserstein(other, ref)})
    trained = configure(run.config)
    den = trained.denoiser(run.ema, None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k in ([HEUN_STEPS] if run.config.method == "edm" else steps):
            if not trained.one_step:
                pts = edm_heun_sample(den, torch.randn(TOY_SAMPLES, 2, generator=gen), None, k).numpy()
            else:
                noise = [torch.randn(TOY_SAMPLES, 2, generator=gen) for _ in range(k)]
                pts = consistency_sample(den, S.default_cm_sigmas(k), noise, None, clip=False).numpy()
            report.rows.append({"steps": k, "swd": sliced_wasserstein(pts, ref)})
    return report


def _encoder_path(run) -> Path:
    """The run's encoder; a bundled decoder names its encoder file beside it."""
    p = Path(run.config.encoder)
    return p if p.exists() else run.path.parent / p.name


def evaluate_decoder(source: str, steps: list[int], seed: int, grid: Path | None = None) -> EvalReport:
    """PSNR and sharpness of held-out digits-color images encoded by the run's encoder and decoded."""
    from .autoencoder import encode, load_encoder
    from .data import load_digits_color
    from .runs import load_run

    run = load_run(source)
    if run.config.data == "photos":
        return evaluate_photo_decoder(run, steps, seed, grid)
    if run.config.data == "digits-text":
        from .captions import load_captioned

        test = load_captioned("test", copies=1).x
    else:
        test = load_digits_color("test", copies=1).x
    latents = encode(load_encoder(_encoder_path(run)), test)
    den = configure(run.config).denoiser(run.ema, run.spec)
    ref_sharp = float(sharpness(test).mean())
    report = EvalReport(source, "decoder", reference={"held_out_images": len(test), "original_sharpness": ref_sharp})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k in steps:
            noise = [torch.randn(test.shape, generator=gen) for _ in range(k)]
            out = decoder_sample(den, latents, S.decoder_timesteps(k), noise, clip=run.spec.clip).clamp(-1, 1)
            if grid is not None:  # originals above their reconstructions
                from ..images import save_grid

                save_grid(torch.cat([test[:GRID_PER_CLASS * 2], out[:GRID_PER_CLASS * 2]]), _grid_path(grid, k),
                          cols=GRID_PER_CLASS * 2, scale=GRID_SCALE)
            report.rows.append({"steps": k, "psnr_db": float(psnr_per_image(out.clamp(-1, 1), test).mean()),
                                "sharpness_ratio": float(sharpness(out).mean()) / ref_sharp})
    return report


def evaluate_photo_decoder(run, steps: list[int], seed: int, grid: Path | None = None) -> EvalReport:
    """The natural-image decoder against its autoencoder's MSE decoder on the whole held-out photos,
    per photo and per text/face/line region (``photo_eval``); ``grid``: side-by-side crop PNGs
    ``<grid stem>_<region>.png``."""
    from . import photo_eval as P

    den = configure(run.config).denoiser(run.ema, run.spec)
    images = P.reconstructions(den, _encoder_path(run), steps, seed)
    report = EvalReport(str(run.path), "photo decoder", reference={"seed": seed, "steps": ",".join(map(str, steps))})
    report.rows = P.score(images)
    if grid is not None:
        P.save_crops(images, grid.parent, grid.stem)
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="(re)train the shipped digit classifier used by `cmrt eval`")
    p.add_argument("--train-classifier", action="store_true")
    a = p.parse_args(argv)
    if a.train_classifier:
        print(json.dumps(train_classifier()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
