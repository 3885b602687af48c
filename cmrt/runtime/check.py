"""Re-check a bundle: the integrity of its files, then any backend against the PyTorch outputs
stored at export."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..bundle import Bundle, EngineParity, Gpu, IntegrityReport, ParityRecord
from ..errors import ParityError
from ..parity import ParityReport
from .backends import open_backend
from .openvino import OpenVinoBackend, for_check, record_lines, record_parity, run_bundle_and_time
from .stored import run_stored_inputs


@dataclass(frozen=True)
class CheckReport:
    """``cmrt check``'s result: the integrity report, then the parity report (None when the
    integrity check failed: a changed file is not run). Truthy when both passed."""

    integrity: IntegrityReport
    parity: ParityReport | None
    engines: tuple[str, ...] = ()  # one line per engine of the bundle: checked where, or never

    @property
    def passed(self) -> bool:
        return self.integrity.passed and self.parity is not None and self.parity.passed

    def __bool__(self) -> bool:
        return self.passed

    def lines(self) -> list[str]:
        out = self.integrity.lines()
        if self.parity is None:
            out += ["parity: not run (the bundle's files differ from what its manifest recorded)"]
        else:
            out += self.parity.lines()
        return out + list(self.engines)

    def raise_if_failed(self) -> "CheckReport":
        self.integrity.raise_if_failed()
        if self.parity is None:
            raise ParityError("parity was not checked")
        self.parity.raise_if_failed()
        return self


def check(engine: str | Path | Bundle, *, backend: str | None = None, record: bool = True) -> CheckReport:
    """Verify every file's SHA-256 and the manifest's digest; then run ``backend`` on the bundle's
    stored parity inputs and compare with the stored PyTorch outputs, with the tolerances of the
    graph's precision. Needs no PyTorch model.

    Args:
        engine: a bundle folder, or a graph/engine file inside one.
        backend: a backend name (None: the default for the bundle).
        record: when an engine was checked, write the result into its manifest record
            (``engines[target].parity``).

    Returns:
        The report (falsy on failure; call ``raise_if_failed()`` to raise).
    """
    bundle = Bundle.open(engine)
    integrity = bundle.verify()
    if not integrity.passed:
        return CheckReport(integrity, None, engine_lines(bundle))
    runner = open_backend(bundle, for_check(bundle, backend))
    if record and isinstance(runner, OpenVinoBackend):  # a CPU backend's own record, with its timing
        run, speed = run_bundle_and_time(bundle, runner)
        record_parity(bundle, runner, run, speed)
    else:
        run = run_stored_inputs(bundle, runner)
    report = run.report
    target = getattr(runner, "engine_target", None)
    if record and target is not None:
        gpu = getattr(runner, "gpu", None)
        record_engine_parity(bundle, target, report, gpu=Gpu(**gpu) if isinstance(gpu, dict) else gpu,
                             library_version=getattr(runner, "library_version", None))
    chosen = f"backend: {runner.name} [{runner.precision}]" + ("" if backend else " (the default here)")
    return CheckReport(integrity, report, engine_lines(bundle) + record_lines(bundle) + (chosen,))


def engine_lines(bundle: Bundle) -> tuple[str, ...]:
    """What the manifest says of each engine's parity: where it was checked and the result, or
    that it never was."""
    return tuple(f"engine {e.file} ({target}): " + engine_verdict(e, bundle.path)
                 for target, e in bundle.manifest.engines.items())


def engine_verdict(e, where: str | Path) -> str:
    """An engine record's parity in words (``where``: the bundle named in the re-check command)."""
    p = e.parity
    if not p.checked or p.result is None:
        return f"never checked against PyTorch: run `cmrt check {where} --backend tensorrt` on a GPU it supports"
    worst = max((o.max_abs or 0.0) for o in p.result.outputs)
    gpu = p.gpu.name if p.gpu else "a GPU"
    return f"{'passed' if p.result.passed else 'FAILED'} on {gpu} ({p.library_version}, {p.when}), max abs {worst:.3g}"


def engine_parity(report: ParityReport, gpu: Gpu | None, library_version: str | None) -> EngineParity:
    """An engine's checked-parity record: ``report`` on ``gpu`` with ``library_version``, now."""
    import datetime as _dt

    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return EngineParity(True, gpu, library_version, when, ParityRecord.of(report))


def record_engine_parity(bundle: Bundle, target: str, report: ParityReport, *, gpu: Gpu | None,
                         library_version: str | None) -> None:
    """Write an engine's check result into its manifest record (atomically).

    The record is re-read under the bundle's lock (``cmrt.tensorrt.record_engine``), not taken from
    ``bundle``: opening the backend recorded the TensorRT-RTX runtime cache's hash after ``bundle``
    was read, and writing back the records read before would reset it to null.
    """
    from ..tensorrt import record_engine

    record_engine(bundle, target, parity=engine_parity(report, gpu, library_version))
