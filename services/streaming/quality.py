"""Image-quality checks of sampled frames: blur, brightness and frozen image, with hysteresis per camera.

Pure: no I/O and no clock reads (times are passed in). Decoding is CPU work, so the ingest adapter runs
``measure_jpeg`` off the event loop; ``QualityTracker`` decides which frames are sampled and when a camera
turns degraded or is restored, each reported exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import cv2
import numpy as np
from numpy.typing import NDArray

from itsmesh.v1 import common_pb2

Issue = common_pb2.QualityIssue
GreyImage = NDArray[np.uint8]

SAMPLE_EVERY_FRAMES: Final = 10
"""Every Nth accepted frame of a camera is decoded, the first one included (at 10 fps about one a second)."""
MIN_SAMPLE_INTERVAL_S: Final = 0.2
"""Samples of one camera are at least this far apart (at most 5 a second), however fast frames come."""

_REDUCED_FLAGS: Final = {
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


@dataclass(frozen=True, slots=True)
class QualityThresholds:
    """When a sampled frame counts as degraded, and how many samples switch a camera's state."""

    reduction: int = 4
    """Decode at 1/reduction of the size (2, 4 or 8): the JPEG decoder skips most of the work."""
    min_laplacian_variance: float = 25.0
    """Below this variance of the Laplacian of the reduced grey image the frame is BLURRY. A sharp road
    scene at 160x90 scores in the hundreds; a defocused or fogged lens falls to single digits."""
    min_brightness_mean: float = 35.0
    """Below this mean luma (0..255) the frame is TOO_DARK."""
    max_brightness_mean: float = 225.0
    """Above this mean luma (0..255) the frame is TOO_BRIGHT."""
    max_frozen_difference_mean: float = 0.3
    """Below this mean absolute luma difference to the previous sample the frame is FROZEN; sensor noise
    alone keeps a live camera above about 1."""
    degrade_after_samples: int = 3
    """Consecutive degraded samples before the camera is reported degraded."""
    restore_after_samples: int = 3
    """Consecutive clean samples before a degraded camera is reported restored."""


DEFAULT_THRESHOLDS: Final = QualityThresholds()


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one decoded sample shows."""

    image: GreyImage = field(repr=False)
    laplacian_variance: float
    brightness_mean: float
    frame_difference_mean: float | None
    """None when there was no previous sample of the same size to compare with."""
    issues: tuple[Issue.ValueType, ...]

    def to_proto(self) -> common_pb2.FrameQuality:
        """The FrameQuality carried on the frame's event."""
        quality = common_pb2.FrameQuality(
            sampled=True,
            laplacian_variance=self.laplacian_variance,
            brightness_mean=self.brightness_mean,
            issues=self.issues,
        )
        if self.frame_difference_mean is not None:
            quality.frame_difference_mean = self.frame_difference_mean
        return quality


def decode_reduced(jpeg: bytes, reduction: int = DEFAULT_THRESHOLDS.reduction) -> GreyImage | None:
    """The JPEG as a grey image at 1/reduction of its size, or None when it does not decode."""
    flag = _REDUCED_FLAGS.get(reduction)
    if flag is None:
        raise ValueError(f"reduction must be one of {sorted(_REDUCED_FLAGS)}, not {reduction}")
    try:
        image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), flag)
    except cv2.error:  # a corrupt scan the decoder refuses outright: the same as "does not decode"
        return None
    if image is None or image.size == 0:
        return None
    return np.asarray(image, dtype=np.uint8)


def measure(
    image: GreyImage, previous: GreyImage | None, thresholds: QualityThresholds = DEFAULT_THRESHOLDS
) -> Measurement:
    """Blur, brightness and difference to the previous sample of a reduced grey image."""
    laplacian_variance = float(cv2.Laplacian(image, cv2.CV_64F).var())
    brightness_mean = float(image.mean())
    difference: float | None = None
    if previous is not None and previous.shape == image.shape:
        difference = float(cv2.absdiff(image, previous).mean())
    issues: list[Issue.ValueType] = []
    if laplacian_variance < thresholds.min_laplacian_variance:
        issues.append(Issue.QUALITY_ISSUE_BLURRY)
    if brightness_mean < thresholds.min_brightness_mean:
        issues.append(Issue.QUALITY_ISSUE_TOO_DARK)
    elif brightness_mean > thresholds.max_brightness_mean:
        issues.append(Issue.QUALITY_ISSUE_TOO_BRIGHT)
    if difference is not None and difference < thresholds.max_frozen_difference_mean:
        issues.append(Issue.QUALITY_ISSUE_FROZEN)
    return Measurement(image, laplacian_variance, brightness_mean, difference, tuple(issues))


def measure_jpeg(
    jpeg: bytes, previous: GreyImage | None, thresholds: QualityThresholds = DEFAULT_THRESHOLDS
) -> Measurement | None:
    """Decode at reduced size and measure; None when the JPEG does not decode. CPU-bound: run in a thread."""
    image = decode_reduced(jpeg, thresholds.reduction)
    return None if image is None else measure(image, previous, thresholds)


@dataclass(frozen=True, slots=True)
class Degraded:
    """The camera turned degraded at this sample: report it once."""

    issues: tuple[Issue.ValueType, ...]
    measurement: Measurement
    sequence: int
    degraded_for_s: float
    """Time from the first degraded sample of the run to this one."""


@dataclass(frozen=True, slots=True)
class Restored:
    """A degraded camera is back within the thresholds at this sample: report it once."""

    cleared_issues: tuple[Issue.ValueType, ...]
    measurement: Measurement
    sequence: int


Transition = Degraded | Restored


class QualityTracker:
    """One camera's quality state: which frames to sample, and degraded/restored with hysteresis.

    A camera is reported degraded after ``degrade_after_samples`` consecutive samples with issues and
    restored after ``restore_after_samples`` consecutive clean ones; samples that do not decode change
    neither count.
    """

    def __init__(
        self,
        thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
        sample_every_frames: int = SAMPLE_EVERY_FRAMES,
        min_sample_interval_s: float = 0.0,
    ) -> None:
        if sample_every_frames < 1:
            raise ValueError("sample_every_frames must be at least 1")
        self.thresholds = thresholds
        self._sample_every = sample_every_frames
        self._min_interval_s = min_sample_interval_s
        self._countdown = 0
        """Frames still to count before the next one is due (0: the next frame is)."""
        self._next_allowed_s = float("-inf")
        self.previous: GreyImage | None = None
        """The last decoded sample, compared with the next one for frozen frames."""
        self.degraded = False
        self._bad_run = 0
        self._good_run = 0
        self._bad_since_s: float | None = None
        self._issues_seen: set[Issue.ValueType] = set()

    @property
    def active_issues(self) -> tuple[Issue.ValueType, ...]:
        """The issues of the current degraded run; empty while the camera is not degraded."""
        return tuple(sorted(self._issues_seen)) if self.degraded else ()

    def should_sample(self, now_s: float = 0.0) -> bool:
        """Count one accepted frame (arrived at ``now_s``); True when it is to be decoded and measured.

        Every Nth frame is due; one due sooner than ``min_sample_interval_s`` after the last sample waits
        for the first frame after it, so a burst (a backlog sent after a reconnect) costs no more decodes
        per second than a live camera does.
        """
        if self._countdown > 0:
            self._countdown -= 1
            return False
        if now_s < self._next_allowed_s:
            return False
        self._countdown = self._sample_every - 1
        self._next_allowed_s = now_s + self._min_interval_s
        return True

    def observe(self, measurement: Measurement, sequence: int, now_s: float) -> Transition | None:
        """Record one sample (``now_s``: its capture time in seconds); the state change it causes, if any."""
        self.previous = measurement.image
        if measurement.issues:
            self._good_run = 0
            self._bad_run += 1
            if self._bad_since_s is None:
                self._bad_since_s = now_s
            self._issues_seen.update(measurement.issues)
            if not self.degraded and self._bad_run >= self.thresholds.degrade_after_samples:
                self.degraded = True
                return Degraded(measurement.issues, measurement, sequence, now_s - self._bad_since_s)
            return None
        self._bad_run = 0
        self._good_run += 1
        if not self.degraded:
            self._bad_since_s = None
            self._issues_seen.clear()
            return None
        if self._good_run >= self.thresholds.restore_after_samples:
            cleared = tuple(sorted(self._issues_seen))
            self.degraded = False
            self._bad_since_s = None
            self._issues_seen.clear()
            return Restored(cleared, measurement, sequence)
        return None
