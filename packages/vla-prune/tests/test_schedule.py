"""Noise schedules: LightVLA's `1 - step / max_steps` (finetune.py ~L1032), constant, none."""

from __future__ import annotations

import pytest

from vla_prune import ImageTokenPruner, NoiseSchedule, linear_decay


def test_linear_matches_lightvla_formula_and_clamps() -> None:
    schedule = NoiseSchedule("linear", max_steps=40_005)
    for step in (0, 1, 1000, 20_000, 40_004):
        assert schedule(step) == pytest.approx(1 - step / 40_005, abs=1e-12)
    assert schedule(40_005) == 0.0
    assert schedule(50_000) == 0.0  # never negative after max_steps
    assert linear_decay(5, 10, start=2.0, end=1.0) == pytest.approx(1.5)


def test_constant_and_none() -> None:
    assert NoiseSchedule("constant", start=0.3)(10**6) == 0.3
    assert NoiseSchedule("none")(0) is None


def test_schedule_drives_pruner_at_run_time() -> None:
    pruner = ImageTokenPruner(8)
    schedule = NoiseSchedule("linear", max_steps=4)
    seen = []
    for step in range(5):
        pruner.set_noise_scale(schedule(step))
        seen.append(pruner.noise_scale)
    assert seen == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule("cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_steps"):
        NoiseSchedule(max_steps=0)
    with pytest.raises(ValueError, match="amplitudes"):
        NoiseSchedule(start=-1.0)
    with pytest.raises(ValueError, match="total"):
        linear_decay(1, 0)
