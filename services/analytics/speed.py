"""Vehicle speed from road-plane positions against real capture timestamps.

A least-squares line through (t, x) and (t, y) over a short window gives the velocity. Using the
timestamps (never frame counts times nominal fps) means dropped frames and irregular frame intervals only
change the number of samples, not the estimate's bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MS_TO_KMH = 3.6


@dataclass(frozen=True, slots=True)
class SpeedFit:
    """A fitted velocity over a window of observations."""

    speed_kmh: float
    vx_mps: float
    vy_mps: float
    uncertainty_kmh: float
    """Standard error of the speed from the fit residuals."""
    sample_count: int
    span_s: float
    """Time between the first and last observation used."""
    x_m: float
    """Fitted position at the reference time."""
    y_m: float


def fit_velocity(
    times: Sequence[float], xs: Sequence[float], ys: Sequence[float], t_ref: float
) -> SpeedFit | None:
    """Least-squares velocity of (t, x, y) samples, positions evaluated at ``t_ref``.

    Returns None with fewer than 2 samples or a zero time span.
    """
    n = len(times)
    if n < 2:
        return None
    t_mean = math.fsum(times) / n
    x_mean = math.fsum(xs) / n
    y_mean = math.fsum(ys) / n
    stt = sxt = syt = 0.0
    for t, x, y in zip(times, xs, ys, strict=True):
        dt = t - t_mean
        stt += dt * dt
        sxt += dt * (x - x_mean)
        syt += dt * (y - y_mean)
    if stt <= 0.0:
        return None
    vx = sxt / stt
    vy = syt / stt
    speed = math.hypot(vx, vy)
    uncertainty = 0.0
    if n > 2:
        # Residual variance projected on the direction of travel gives the speed's standard error.
        ux, uy = (vx / speed, vy / speed) if speed > 0 else (1.0, 0.0)
        ss = 0.0
        for t, x, y in zip(times, xs, ys, strict=True):
            dt = t - t_mean
            along = (x - x_mean - vx * dt) * ux + (y - y_mean - vy * dt) * uy
            ss += along * along
        uncertainty = math.sqrt(ss / (n - 2) / stt) * MS_TO_KMH
    return SpeedFit(
        speed_kmh=speed * MS_TO_KMH,
        vx_mps=vx,
        vy_mps=vy,
        uncertainty_kmh=uncertainty,
        sample_count=n,
        span_s=max(times) - min(times),
        x_m=x_mean + vx * (t_ref - t_mean),
        y_m=y_mean + vy * (t_ref - t_mean),
    )


def fit_around(
    times: Sequence[float],
    xs: Sequence[float],
    ys: Sequence[float],
    t_centre: float,
    window_s: float,
    *,
    max_window_s: float | None = None,
    target_samples: int = 15,
    min_samples: int = 4,
) -> SpeedFit | None:
    """Velocity fitted over the samples within ``window_s`` centred on ``t_centre``.

    At low frame rates a 1 s window holds too few observations for a steady slope, so the window is
    widened symmetrically (in 25 % steps, up to ``max_window_s``) until it holds ``target_samples``. A
    symmetric window keeps the estimate unbiased under constant acceleration: the fitted slope is the
    velocity at the samples' mean time, which stays at the centre. When even that holds fewer than
    ``min_samples`` (a short track, a long gap), up to three times ``window_s`` is used.
    """
    widest = max(window_s, max_window_s or window_s)
    width = window_s
    idx: list[int] = []
    while True:
        half = width / 2.0
        idx = [i for i, t in enumerate(times) if t_centre - half <= t <= t_centre + half]
        if len(idx) >= target_samples or width >= widest:
            break
        width = min(widest, width * 1.25)
    if len(idx) < min_samples:
        half = 1.5 * widest
        idx = [i for i, t in enumerate(times) if t_centre - half <= t <= t_centre + half]
    return fit_velocity([times[i] for i in idx], [xs[i] for i in idx], [ys[i] for i in idx], t_centre)
