"""A bundle's stored parity inputs run on a backend and compared with the stored PyTorch outputs:
the one measurement `cmrt check` and a backend's own parity record both take."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle import OUTPUT_NAME, Bundle
from ..parity import ParityReport, compare


@dataclass(frozen=True)
class StoredRun:
    """What one run of the stored inputs gave: the comparison, the run's time and its outputs."""

    report: ParityReport
    seconds: float
    actual: dict[str, np.ndarray]


def run_stored_inputs(bundle: Bundle, backend: Any) -> StoredRun:
    """Run ``backend`` on ``bundle``'s stored parity inputs, then close it; compare its output with
    the stored PyTorch outputs under the tolerances of the backend's precision."""
    try:
        inputs, expected = bundle.parity_data()
        t0 = time.perf_counter()
        actual = {OUTPUT_NAME: backend.run(inputs)}
        seconds = time.perf_counter() - t0
    finally:
        backend.close()
    return StoredRun(compare(actual, expected, backend=backend.name, precision=backend.precision), seconds, actual)
