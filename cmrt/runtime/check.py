"""Re-check a bundle on any backend against the PyTorch outputs stored at export."""

from __future__ import annotations

from pathlib import Path

from ..bundle import OUTPUT_NAME, Bundle
from ..parity import ParityReport, compare
from .backends import open_backend


def check(engine: str | Path | Bundle, *, backend: str | None = None) -> ParityReport:
    """Run ``backend`` on the bundle's stored parity inputs and compare with the stored PyTorch
    outputs, with the tolerances of the graph's precision. Needs no PyTorch model.

    Returns:
        The report (falsy on failure; call ``raise_if_failed()`` to raise).
    """
    bundle = Bundle.open(engine)
    runner = open_backend(bundle, backend)
    inputs, expected = bundle.parity_data()
    actual = {OUTPUT_NAME: runner.run(inputs)}
    return compare(actual, expected, backend=runner.name, precision=runner.precision)
