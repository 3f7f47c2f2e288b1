"""When a camera captures frames and what its edge detector reports in each: pure and seeded.

``capture_schedule`` gives the frames a camera sends, in sending order: capture times around the nominal
period (optionally irregular), some dropped (their sequence numbers are skipped, as a camera that loses
frames does), some sent twice (duplicates: resent right after the next frame, as a camera that missed
an ack does) and some swapped with their successor (out of order; streaming refuses those).
``detections_at`` gives the boxes of the vehicles in view at one capture time: the bottom-centre of each
box (before jitter) is exactly the image of the vehicle's reference point (see ``scene``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from services.simulator.geometry import PinholeCamera
from services.simulator.scene import Scene, Vehicle

MIN_BOX_WIDTH_PX: Final = 3.0
"""Vehicles narrower than this (far away) are not detected."""
MAX_DETECTION_RANGE_M: Final = 180.0
"""Nor are those farther than this along the road."""


@dataclass(frozen=True, slots=True)
class FrameOptions:
    """How imperfect a camera's stream is."""

    fps: float = 10.0
    drop_rate: float = 0.1
    irregular: float = 0.25
    """Capture times deviate from the nominal grid by up to this fraction of the period."""
    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.0
    jitter_px: float = 1.5
    """Each box edge moves by up to this many pixels (uniform), independently per frame."""
    edge_detections: bool = True


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in pixels."""

    left: float
    top: float
    width: float
    height: float

    @property
    def bottom_centre(self) -> tuple[float, float]:
        return self.left + self.width / 2, self.top + self.height


@dataclass(frozen=True, slots=True)
class SimDetection:
    """One vehicle in one frame: the reported (jittered) box and the true one."""

    vehicle_id: str
    vehicle: Vehicle
    box: Box
    true_box: Box
    confidence: float


@dataclass(frozen=True, slots=True)
class SimFrame:
    """One frame as sent: sequence, scene time of capture, detections; ``resend`` marks a duplicate."""

    sequence: int
    t: float
    detections: tuple[SimDetection, ...] = ()
    resend: bool = False
    swapped: bool = False
    """Sent after its successor (out of order)."""


@dataclass(frozen=True, slots=True)
class Capture:
    """A scheduled capture before detections are attached."""

    sequence: int
    t: float
    resend: bool = False
    swapped: bool = False


@dataclass(slots=True)
class ScheduleStats:
    """What the schedule did, for the ground truth."""

    captured: int = 0
    dropped: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    swapped: list[int] = field(default_factory=list)


def capture_schedule(
    duration_s: float, options: FrameOptions, seed: int, key: str = "cam"
) -> tuple[list[Capture], ScheduleStats]:
    """The captures a camera sends, in sending order, and what was dropped, duplicated or swapped."""
    rng = np.random.default_rng([seed, 7, *key.encode()])
    period = 1.0 / options.fps
    stats = ScheduleStats()
    kept: list[Capture] = []
    count = int(duration_s * options.fps)
    for k in range(count):
        sequence = k + 1
        # Keep the deviation under half a period so capture times stay increasing.
        offset = float(rng.uniform(-1.0, 1.0)) * min(options.irregular, 0.45) * period
        t = max(0.0, k * period + offset)
        if rng.random() < options.drop_rate:
            stats.dropped.append(sequence)
            continue
        stats.captured += 1
        kept.append(Capture(sequence, t))
    sent: list[Capture] = []
    resend: Capture | None = None
    i = 0
    while i < len(kept):
        capture = kept[i]
        if i + 1 < len(kept) and rng.random() < options.out_of_order_rate:
            later = kept[i + 1]
            sent.extend([later, Capture(capture.sequence, capture.t, swapped=True)])
            stats.swapped.append(capture.sequence)
            i += 2
        else:
            sent.append(capture)
            i += 1
        if resend is not None:
            sent.append(resend)
            resend = None
        elif rng.random() < options.duplicate_rate and not sent[-1].swapped:
            # Resent one frame later, as a camera that missed an ack does (its original is acked by then).
            resend = Capture(sent[-1].sequence, sent[-1].t, resend=True)
            stats.duplicated.append(resend.sequence)
    if resend is not None:
        sent.append(resend)
    return sent, stats


def true_box(vehicle: Vehicle, t: float, scene: Scene, camera: PinholeCamera) -> Box | None:
    """The box around a vehicle's projected body at time t, with its bottom-centre at the reference point.

    None when the vehicle is not in front of the camera.
    """
    x, y = vehicle.position(t, scene.road)
    kind = vehicle.kind
    if camera.depth(x, y, 0.0) <= 1.0:
        return None
    u_ref, v_ref = camera.project(x, y, 0.0)
    half_width = 0.0
    top = v_ref
    for dx in (-kind.width_m / 2, kind.width_m / 2):
        for dy in (0.0, kind.length_m):
            for z in (0.0, kind.height_m):
                u, v = camera.project(x + dx, y + dy, z)
                half_width = max(half_width, abs(u - u_ref))
                top = min(top, v)
    return Box(u_ref - half_width, top, 2 * half_width, v_ref - top)


def _inside(box: Box, camera: PinholeCamera) -> bool:
    return (
        box.left >= 0
        and box.top >= 0
        and box.left + box.width <= camera.width_px
        and box.top + box.height <= camera.height_px
    )


def detections_at(
    scene: Scene,
    camera: PinholeCamera,
    t: float,
    options: FrameOptions,
    rng: np.random.Generator,
) -> tuple[SimDetection, ...]:
    """Detections of the visible vehicles wholly inside the image at time t, far to near."""
    found: list[tuple[float, SimDetection]] = []
    for vehicle in scene.present(t):
        if not vehicle.visible(t):
            continue
        _, y = vehicle.position(t, scene.road)
        if y > MAX_DETECTION_RANGE_M:
            continue
        box = true_box(vehicle, t, scene, camera)
        if box is None or box.width < MIN_BOX_WIDTH_PX or not _inside(box, camera):
            continue
        jitter = options.jitter_px
        d_left, d_top, d_right, d_bottom = (float(v) for v in rng.uniform(-jitter, jitter, 4))
        left = min(max(0.0, box.left + d_left), camera.width_px - 1.0)
        top = min(max(0.0, box.top + d_top), camera.height_px - 1.0)
        right = min(max(left + 1.0, box.left + box.width + d_right), float(camera.width_px))
        bottom = min(max(top + 1.0, box.top + box.height + d_bottom), float(camera.height_px))
        reported = Box(left, top, right - left, bottom - top)
        # Far, small vehicles are detected with less confidence.
        confidence = float(min(0.99, 0.55 + box.width / 200 + float(rng.uniform(0.0, 0.05))))
        found.append((y, SimDetection(vehicle.vehicle_id, vehicle, reported, box, confidence)))
    found.sort(key=lambda item: -item[0])
    return tuple(d for _, d in found)


def iter_frames(
    scene: Scene, camera: PinholeCamera, options: FrameOptions, key: str = "cam"
) -> tuple[Iterator[SimFrame], ScheduleStats]:
    """Every frame of a camera, lazily, in sending order (a duplicate repeats its original's boxes)."""
    captures, stats = capture_schedule(scene.config.duration_s, options, scene.config.seed, key)

    def frames() -> Iterator[SimFrame]:
        for capture in captures:
            detections: tuple[SimDetection, ...] = ()
            if options.edge_detections:
                # Seeded per sequence, so a frame's boxes do not depend on which frames came before.
                rng = np.random.default_rng([scene.config.seed, 11, capture.sequence, *key.encode()])
                detections = detections_at(scene, camera, capture.t, options, rng)
            yield SimFrame(capture.sequence, capture.t, detections, capture.resend, capture.swapped)

    return frames(), stats


def camera_frames(
    scene: Scene, camera: PinholeCamera, options: FrameOptions, key: str = "cam"
) -> tuple[list[SimFrame], ScheduleStats]:
    """``iter_frames`` as a list."""
    frames, stats = iter_frames(scene, camera, options, key)
    return list(frames), stats
