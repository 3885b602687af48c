"""The bundle: a self-describing folder holding an exported sampler.

```
bundle/
  cmrt.json                 manifest (this module's ``Manifest``)
  model.onnx (+ .data)      FP32 graph
  model.fp16.onnx (+ .data) FP16 graph, when asked
  parity.npz                golden inputs and the PyTorch outputs
  engine.*.plan             TensorRT engines, after ``cmrt build``
```
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ._io import write_json_atomic
from .errors import BundleError, BundleNotFoundError

MANIFEST = "cmrt.json"
PARITY = "parity.npz"
FORMAT_VERSION = 1
GRAPH_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}
OUTPUT_NAME = "images"
VALUE_RANGE = (-1.0, 1.0)


@dataclass
class Manifest:
    """What a bundle holds and how it was made (``cmrt.json``)."""

    kind: str
    steps: int
    inputs: list[dict]
    outputs: list[dict]
    graphs: dict[str, dict]
    model: dict
    source: dict
    versions: dict
    sigmas: list[float] | None = None
    timesteps: list[int] | None = None
    clip: bool = True
    image: dict = field(default_factory=dict)
    latent: dict | None = None
    num_classes: int | None = None
    parity: dict[str, dict] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=dict)
    engines: dict[str, dict] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = MANIFEST) -> "Manifest":
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = required - set(d)
        if missing:
            raise BundleError(f"{where} lacks the fields {sorted(missing)}: re-export the bundle with `cmrt export`")
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise BundleError(f"{where} has format version {d['format_version']}, newer than this cmrt "
                              f"understands ({FORMAT_VERSION}): upgrade cmrt")
        if d["kind"] not in ("sampler", "decoder"):
            raise BundleError(f"{where}: kind must be 'sampler' or 'decoder', got {d['kind']!r}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    @property
    def noise_names(self) -> list[str]:
        return [n for n in self.input_names if n.startswith("noise_")]


class Bundle:
    """An opened bundle: its folder, manifest, and (optionally) the file the user pointed at."""

    def __init__(self, path: Path, manifest: Manifest, selected: str | None = None) -> None:
        self.path, self.manifest, self.selected = path, manifest, selected

    @classmethod
    def open(cls, engine: "str | Path | Bundle") -> "Bundle":
        """Open a bundle folder, or the folder of a graph or engine file inside one."""
        if isinstance(engine, Bundle):
            return engine
        p = Path(engine)
        if not p.exists():
            raise BundleNotFoundError(f"{p} does not exist: pass a bundle folder made by `cmrt export`, "
                                      "or a graph inside one")
        folder, selected = (p, None) if p.is_dir() else (p.parent, p.name)
        mpath = folder / MANIFEST
        if not mpath.is_file():
            raise BundleNotFoundError(f"{folder} has no {MANIFEST}: it is not a cmrt bundle "
                                      "(make one with `cmrt export`)")
        try:
            data = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{mpath} is not valid JSON ({exc}): re-export the bundle") from None
        if not isinstance(data, dict):
            raise BundleError(f"{mpath} is not a JSON object: re-export the bundle")
        bundle = cls(folder, Manifest.from_dict(data, str(mpath)), selected)
        if selected is not None and selected not in bundle.known_files():
            raise BundleError(f"{p} is not a graph or engine listed in {mpath}")
        return bundle

    def known_files(self) -> set[str]:
        files = {g["file"] for g in self.manifest.graphs.values()}
        return files | {e["file"] for e in self.manifest.engines.values()}

    def graph_path(self, precision: str | None = None) -> Path:
        """The ONNX graph to run: the selected one, else ``precision``'s, else FP32."""
        graphs = self.manifest.graphs
        if precision is None and self.selected is not None:
            match = [k for k, g in graphs.items() if g["file"] == self.selected]
            if match:
                precision = match[0]
        precision = precision or ("fp32" if "fp32" in graphs else next(iter(graphs)))
        if precision not in graphs:
            raise BundleError(f"{self.path} has no {precision} graph (it has {sorted(graphs)}); "
                              f"make one with `cmrt export --precision {precision}`")
        path = self.path / graphs[precision]["file"]
        if not path.is_file():
            raise BundleNotFoundError(f"{path} is listed in {MANIFEST} but missing: re-export the bundle")
        return path

    def precision_of(self, graph: Path) -> str:
        for k, g in self.manifest.graphs.items():
            if g["file"] == graph.name:
                return k
        raise BundleError(f"{graph} is not listed in {self.path / MANIFEST}")

    def parity_data(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The stored golden inputs and PyTorch outputs."""
        path = self.path / PARITY
        if not path.is_file():
            raise BundleNotFoundError(f"{path} is missing: re-export the bundle to store parity data")
        with np.load(path, allow_pickle=False) as data:
            inputs = {k[len("input/"):]: data[k] for k in data.files if k.startswith("input/")}
            outputs = {k[len("output/"):]: data[k] for k in data.files if k.startswith("output/")}
        if set(inputs) != set(self.manifest.input_names):
            raise BundleError(f"{path} holds inputs {sorted(inputs)} but the manifest lists "
                              f"{self.manifest.input_names}: re-export the bundle")
        return inputs, outputs

    def save_manifest(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest.to_dict())


def save_parity(path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    arrays = {f"input/{k}": v for k, v in inputs.items()} | {f"output/{k}": v for k, v in outputs.items()}
    np.savez(path, **arrays)
