"""Server-side detection of moving vehicles for cameras without edge AI: background subtraction on samples.

Pure: no I/O and no clock reads. One ``MotionDetector`` per camera keeps the background model; it is fed
the reduced grey images the quality checks already decoded, so detection adds no decode of its own. The
ingest adapter runs it off the event loop, one sample at a time per camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np

from services.streaming.quality import GreyImage

_FOREGROUND: Final = 200
"""MOG2 marks foreground 255 and shadows 127; only foreground counts."""


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    """How the background model learns and which foreground blobs count as vehicles."""

    history_samples: int = 100
    """Samples the background model remembers."""
    variance_threshold: float = 16.0
    """Squared Mahalanobis distance above which a pixel is foreground (OpenCV's default)."""
    warmup_samples: int = 5
    """Samples the model learns from before it reports anything (the first ones are all foreground)."""
    min_area_px: int = 12
    """Smallest blob, in reduced-image pixels (at 1/4 of 640x360, about a 14x14-pixel object)."""
    full_confidence_area_px: int = 300
    """Blob area (reduced pixels) at which the confidence reaches its maximum."""
    max_detections: int = 32
    """Largest blobs kept per frame."""


DEFAULT_DETECTION: Final = DetectionSettings()


@dataclass(frozen=True, slots=True)
class MovingObject:
    """A moving blob, in full-frame pixel coordinates, with a confidence derived from its area."""

    left_px: int
    top_px: int
    width_px: int
    height_px: int
    confidence: float


class MotionDetector:
    """One camera's background model (MOG2): reduced grey samples in, moving-object boxes out."""

    def __init__(self, settings: DetectionSettings = DEFAULT_DETECTION) -> None:
        self.settings = settings
        self._kernel = np.ones((3, 3), dtype=np.uint8)
        self._model = self._new_model()
        self._samples = 0
        self._shape: tuple[int, ...] | None = None

    def _new_model(self) -> cv2.BackgroundSubtractorMOG2:
        return cv2.createBackgroundSubtractorMOG2(
            history=self.settings.history_samples,
            varThreshold=self.settings.variance_threshold,
            detectShadows=True,
        )

    def detect(self, image: GreyImage, frame_width_px: int, frame_height_px: int) -> list[MovingObject]:
        """Learn from ``image`` and return the moving blobs, scaled to the full frame size given."""
        if self._shape is not None and image.shape != self._shape:  # resolution changed: start over
            self._model, self._samples = self._new_model(), 0
        self._shape = image.shape
        mask = self._model.apply(image)
        self._samples += 1
        if self._samples <= self.settings.warmup_samples:
            return []
        _, foreground = cv2.threshold(mask, _FOREGROUND, 255, cv2.THRESH_BINARY)
        foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, self._kernel)
        foreground = cv2.dilate(foreground, self._kernel, iterations=2)
        contours, _ = cv2.findContours(foreground, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        scale_x = frame_width_px / image.shape[1]
        scale_y = frame_height_px / image.shape[0]
        found: list[tuple[float, MovingObject]] = []
        for contour in contours:
            area = float(cv2.contourArea(contour))
            if area < self.settings.min_area_px:
                continue
            x, y, w, h = cv2.boundingRect(contour)
            left, top = int(x * scale_x), int(y * scale_y)
            right = min(frame_width_px, round((x + w) * scale_x))
            bottom = min(frame_height_px, round((y + h) * scale_y))
            if right <= left or bottom <= top:
                continue
            confidence = 0.3 + 0.65 * min(1.0, area / self.settings.full_confidence_area_px)
            found.append((area, MovingObject(left, top, right - left, bottom - top, round(confidence, 3))))
        found.sort(key=lambda pair: pair[0], reverse=True)
        return [moving for _, moving in found[: self.settings.max_detections]]
