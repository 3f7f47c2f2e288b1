"""Constant-velocity Kalman tracking with Hungarian assignment, on constructed road-plane tracks."""

from __future__ import annotations

import random

import numpy as np

from services.analytics.tracker import Detections, Tracker


def _frame(t, seq, points, r=0.04):
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    return Detections(
        t=t,
        sequence=seq,
        x_m=pts[:, 0].copy(),
        y_m=pts[:, 1].copy(),
        r_x=np.full(n, r),
        r_y=np.full(n, r),
        u_px=pts[:, 0].copy(),
        v_px=pts[:, 1].copy(),
        classes=("car",) * n,
        confidences=(0.9,) * n,
    )


def _run(tracker, vehicles, rng, *, seconds=4.0, fps=25.0, drop=0.0, jitter=0.0, hidden=None):
    """vehicles: list of (x, y0, vy); returns the track ids assigned to each vehicle over time."""
    ids: list[set[str]] = [set() for _ in vehicles]
    for k in range(int(seconds * fps)):
        if rng.random() < drop:
            continue
        t = k / fps + rng.uniform(-0.008, 0.008)
        visible = [
            i
            for i in range(len(vehicles))
            if hidden is None or not (hidden[0] <= t <= hidden[1] and i == hidden[2])
        ]
        order = visible[:]
        rng.shuffle(order)
        pts = [
            (
                vehicles[i][0] + rng.gauss(0, jitter),
                vehicles[i][1] + vehicles[i][2] * t + rng.gauss(0, jitter),
            )
            for i in order
        ]
        result = tracker.step(_frame(t, k + 1, pts))
        for i, tr in zip(order, result.assigned, strict=True):
            ids[i].add(tr.track_id)
    return ids


def test_side_by_side_vehicles_keep_their_identity_through_jitter_and_drops():
    rng = random.Random(2)
    tracker = Tracker()
    vehicles = [(-3.5, 10.0, 33.0), (0.0, 12.0, 25.0), (3.5, 80.0, -20.0)]
    ids = _run(tracker, vehicles, rng, drop=0.1, jitter=0.15)
    assert all(len(s) == 1 for s in ids)
    assert len(tracker.tracks) == 3
    assert all(tr.confirmed for tr in tracker.tracks)
    speeds = sorted(tr.speed_mps for tr in tracker.tracks)
    assert np.allclose(speeds, [20.0, 25.0, 33.0], atol=1.0)


def test_half_second_occlusion_keeps_the_track():
    rng = random.Random(5)
    tracker = Tracker()
    vehicles = [(0.0, 10.0, 30.0), (3.5, 5.0, 28.0)]
    ids = _run(tracker, vehicles, rng, drop=0.1, jitter=0.1, hidden=(1.5, 2.0, 0))
    assert [len(s) for s in ids] == [1, 1]


def test_a_track_lost_for_longer_than_max_age_is_removed_and_a_new_one_starts():
    tracker = Tracker()
    for k in range(10):
        tracker.step(_frame(k * 0.04, k, [(0.0, k * 0.04 * 10)]))
    first = tracker.tracks[0].track_id
    result = tracker.step(_frame(3.0, 99, [(0.0, 30.0)]))
    assert [tr.track_id for tr in result.removed] == [first]
    assert result.assigned[0].track_id == "99-0"
    assert not result.assigned[0].confirmed


def test_tracks_confirm_after_min_hits_and_far_detections_start_new_tracks():
    tracker = Tracker()
    tracker.step(_frame(0.0, 1, [(0.0, 0.0)]))
    tracker.step(_frame(0.04, 2, [(0.0, 1.0)]))
    result = tracker.step(_frame(0.08, 3, [(0.0, 2.0), (0.0, 60.0)]))
    assert result.assigned[0].confirmed
    assert result.assigned[0].track_id == "1-0"
    assert result.assigned[1].track_id == "3-1"
    assert not result.assigned[1].confirmed


def test_velocity_follows_real_time_steps():
    tracker = Tracker()
    times = [0.0, 0.03, 0.11, 0.13, 0.25, 0.29, 0.4, 0.52, 0.55, 0.7]
    for k, t in enumerate(times):
        tracker.step(_frame(t, k, [(0.0, 20.0 * t)]))
    (tr,) = tracker.tracks
    assert abs(tr.vy - 20.0) < 0.01
    assert abs(tr.vx) < 0.01
