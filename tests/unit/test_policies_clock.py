"""Clock drift: corrected recorded_at and the drift flag at its bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from ingestd.policies.clock import corrected_recorded_at, evaluate_drift
from store.models import FlagKind
from store.times import NaiveDatetimeError

RAW = datetime(2026, 3, 2, 2, 0, 5, tzinfo=UTC)
MEASURED = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 10, 0, 1, tzinfo=UTC)


def test_a_fast_camera_clock_is_corrected_backwards() -> None:
    # offset = camera - station = +5 s: the camera wrote 02:00:05 when the station said 02:00:00.
    assert corrected_recorded_at(RAW, 5.0) == datetime(2026, 3, 2, 2, 0, 0, tzinfo=UTC)
    assert corrected_recorded_at(RAW, -2.5) == RAW + timedelta(seconds=2.5)
    assert corrected_recorded_at(RAW, None) == RAW


def test_corrected_time_refuses_naive_and_non_finite_input() -> None:
    with pytest.raises(NaiveDatetimeError):
        corrected_recorded_at(datetime(2026, 3, 2), 1.0)  # noqa: DTZ001 - the naive value under test
    with pytest.raises(ValueError, match="finite"):
        corrected_recorded_at(RAW, float("nan"))


@pytest.mark.parametrize("offset", [30.0, -30.0, 0.0, None])
def test_drift_at_or_within_the_bound_is_not_flagged(offset: float | None) -> None:
    assert evaluate_drift("ZF00001", offset, 30.0, measured_at=MEASURED, now=NOW) is None


@pytest.mark.parametrize("offset", [30.001, -30.001, 3600.0])
def test_drift_beyond_the_bound_is_flagged_once_per_measurement(offset: float) -> None:
    flag = evaluate_drift("ZF00001", offset, 30.0, measured_at=MEASURED, now=NOW, camera_id=4)
    assert flag is not None
    assert flag.kind is FlagKind.DRIFT
    assert flag.dedup_key == "drift:ZF00001:2026-03-02T10:00:00+00:00"
    assert flag.details == {"offset_s": offset, "bound_s": 30.0, "measured_at": "2026-03-02T10:00:00+00:00"}
    again = evaluate_drift("ZF00001", offset, 30.0, measured_at=MEASURED, now=NOW + timedelta(hours=1))
    assert again is not None
    assert again.dedup_key == flag.dedup_key


def test_a_non_positive_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        evaluate_drift("ZF00001", 1.0, 0.0, measured_at=MEASURED, now=NOW)


@time_machine.travel(datetime(2029, 1, 1, tzinfo=UTC), tick=False)
def test_drift_flag_carries_the_injected_now() -> None:
    flag = evaluate_drift("ZF00001", 99.0, 30.0, measured_at=MEASURED, now=NOW)
    assert flag is not None
    assert flag.raised_at == NOW
