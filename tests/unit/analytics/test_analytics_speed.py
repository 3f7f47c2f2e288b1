"""Least-squares speed against real capture timestamps."""

from __future__ import annotations

import random
import statistics

import pytest

from services.analytics.speed import fit_around, fit_velocity


def _track(speed_mps, rng, *, drop=0.0, jitter_m=0.0, fps=25.0, seconds=2.0):
    times, xs, ys = [], [], []
    for k in range(int(seconds * fps)):
        if rng.random() < drop:
            continue
        t = 100.0 + k / fps + rng.uniform(-0.01, 0.01)
        times.append(t)
        xs.append(1.0 + rng.gauss(0, jitter_m))
        ys.append(20.0 + speed_mps * (t - 100.0) + rng.gauss(0, jitter_m))
    return times, xs, ys


def test_exact_on_clean_motion_with_drops_and_irregular_times():
    rng = random.Random(1)
    times, xs, ys = _track(25.0, rng, drop=0.3)
    fit = fit_velocity(times, xs, ys, t_ref=101.0)
    assert fit is not None
    assert fit.speed_kmh == pytest.approx(90.0, abs=1e-9)
    assert fit.y_m == pytest.approx(45.0, abs=1e-9)
    assert fit.uncertainty_kmh < 1e-6


def test_uses_timestamps_not_frame_counts():
    # Frames come at 10 fps for a while, then 30 fps: an fps-based estimate would be off by 3x.
    times = [i * 0.1 for i in range(10)] + [1.0 + i / 30 for i in range(30)]
    ys = [12.0 * t for t in times]
    fit = fit_velocity(times, [0.0] * len(times), ys, t_ref=1.0)
    assert fit is not None
    assert fit.speed_kmh == pytest.approx(12.0 * 3.6)


def test_unbiased_under_jitter():
    rng = random.Random(7)
    errors = []
    for _ in range(300):
        times, xs, ys = _track(20.0, rng, drop=0.1, jitter_m=0.3)
        fit = fit_around(times, xs, ys, 101.0, 1.0)
        assert fit is not None
        errors.append(fit.speed_kmh - 72.0)
    assert abs(statistics.fmean(errors)) < 0.15
    assert statistics.fmean(abs(e) for e in errors) < 1.5


def test_window_is_centred_and_widened_when_sparse():
    times = [0.0, 0.1, 0.2, 0.3, 1.4, 1.5, 2.5, 2.6]
    ys = [10.0 * t for t in times]
    fit = fit_around(times, [0.0] * 8, ys, 0.15, 0.5)
    assert fit is not None
    assert fit.sample_count == 4
    sparse = fit_around(times, [0.0] * 8, ys, 2.0, 0.5)
    assert sparse is not None
    assert sparse.sample_count >= 4
    assert sparse.speed_kmh == pytest.approx(36.0)


def test_needs_two_distinct_times():
    assert fit_velocity([1.0], [0.0], [0.0], 1.0) is None
    assert fit_velocity([1.0, 1.0], [0.0, 1.0], [0.0, 1.0], 1.0) is None


def test_low_frame_rates_widen_the_window_symmetrically_up_to_the_maximum():
    times = [k / 10.0 for k in range(60)]  # 10 fps for 6 s
    ys = [3.0 + 15.0 * t + 0.5 * 2.0 * t * t for t in times]  # accelerating at 2 m/s²
    fit = fit_around(times, [0.0] * 60, ys, 3.0, 1.0, max_window_s=2.0)
    assert fit is not None
    assert 15 <= fit.sample_count <= 21
    assert fit.span_s <= 2.0
    # symmetric around the centre: the slope is the velocity at t = 3 s despite the acceleration
    assert fit.vy_mps == pytest.approx(15.0 + 2.0 * 3.0, abs=1e-9)
    at_25_fps = [k / 25.0 for k in range(150)]
    narrow = fit_around(at_25_fps, [0.0] * 150, [10.0 * t for t in at_25_fps], 3.0, 1.0, max_window_s=2.0)
    assert narrow is not None
    assert narrow.span_s <= 1.0
