"""The timing a backend record carries (``cmrt.runtime.speed``): paired rounds and one-after-the-other
medians give the speed-up of a backend that takes half the time, close the other backend and keep
the first open. The stand-ins below sleep a known time: the arithmetic is what is under test (the
real backends' timings are checked in tests/runtime/test_openvino.py)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from cmrt.runtime import speed


class Sleeper:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls, self.closed = seconds, 0, False

    def run_all(self, feeds):
        self.calls += 1
        time.sleep(self.seconds)
        return {"images": feeds["x"]}

    def close(self) -> None:
        self.closed = True


FEEDS = {"x": np.zeros((2, 3, 4, 5), np.float32)}


def test_paired_rounds():
    fast, slow = Sleeper(0.01), Sleeper(0.02)
    rec = speed.paired(fast, "slow", lambda: slow, FEEDS, speed.describe_inputs(FEEDS, "test inputs"), rounds=4)
    assert rec.against == "slow" and rec.calls == 4 and rec.order == speed.PAIRED
    assert fast.calls == slow.calls == 5 and slow.closed and not fast.closed  # one untimed call each
    assert 1.5 < rec.speedup < 2.5 and rec.seconds < rec.against_seconds
    assert rec.inputs == "test inputs: x (2, 3, 4, 5)"


def test_one_after_the_other():
    slow = Sleeper(0.02)
    seconds = speed.timed(Sleeper(0.01), FEEDS, calls=2)
    rec = speed.against(seconds, "slow", lambda: slow, FEEDS, "x", calls=2)
    assert slow.calls == 3 and slow.closed and rec.order == speed.ORDER and rec.calls == 2
    assert rec.speedup == pytest.approx(rec.against_seconds / rec.seconds, rel=1e-2) and 1.5 < rec.speedup < 2.5
    assert ", 2.00× slow" in speed.speed_line(replace(rec, speedup=2.0)) and speed.speed_line(None) == ""
