"""Draws a camera's frames with OpenCV: the road from the camera's projection, vehicles where boxes say.

The static background (sky, verges, asphalt, lane markings) is drawn once per camera through the same
``PinholeCamera`` that gives the homography; each frame copies it, paints the visible vehicles far to
near as shaded boxes exactly over their true boxes, adds a little sensor noise (so no two frames are
identical, as with a real sensor) and encodes a baseline JPEG.
"""

from __future__ import annotations

import hashlib
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from services.simulator.frames import Box, true_box
from services.simulator.geometry import PinholeCamera
from services.simulator.scene import Scene, Vehicle

Image = npt.NDArray[np.uint8]

SKY: Final = (235, 206, 170)  # BGR
VERGE: Final = (70, 130, 80)
ASPHALT: Final = (90, 90, 90)
MARKING: Final = (235, 235, 235)
_NEAREST_Y_M: Final = 2.0
_FARTHEST_Y_M: Final = 2000.0
_DASH_M: Final = (3.0, 9.0)  # painted, gap
_MARKING_M: Final = 0.15


def vehicle_colour(vehicle_id: str) -> tuple[int, int, int]:
    """A stable, saturated body colour per vehicle (BGR), far from the asphalt grey."""
    digest = hashlib.blake2b(vehicle_id.encode(), digest_size=3).digest()
    hue = digest[0] % 180
    hsv = np.array([[[hue, 200, 150 + digest[1] % 90]]], dtype=np.uint8)
    b, g, r = (int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
    return b, g, r


class Renderer:
    """Renders one camera's scene; holds its background."""

    def __init__(self, scene: Scene, camera: PinholeCamera, *, noise: int = 3, quality: int = 85) -> None:
        self.scene = scene
        self.camera = camera
        self.noise = noise
        """Largest sensor-noise offset per pixel (uniform, in grey levels); 0 = none."""
        self.quality = quality
        self.background = self._background()

    def _quad(self, x0: float, x1: float, y0: float, y1: float) -> npt.NDArray[np.int32]:
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        points = [self.camera.project(x, y) for x, y in corners]
        return np.array([[round(u * 16), round(v * 16)] for u, v in points], dtype=np.int32)

    def _fill(self, image: Image, quad: npt.NDArray[np.int32], colour: tuple[int, int, int]) -> None:
        cv2.fillPoly(image, [quad], colour, lineType=cv2.LINE_AA, shift=4)

    def _background(self) -> Image:
        camera, road = self.camera, self.scene.road
        image = np.empty((camera.height_px, camera.width_px, 3), dtype=np.uint8)
        image[:] = VERGE
        horizon = max(0, min(camera.height_px, int(camera.horizon_v) + 1))
        image[:horizon] = SKY
        near, far = _NEAREST_Y_M, _FARTHEST_Y_M
        self._fill(image, self._quad(-2.5, road.width_m + 2.5, near, far), ASPHALT)
        half = _MARKING_M / 2
        for x in (0.0, road.width_m):  # solid edge lines
            self._fill(image, self._quad(x - half, x + half, near, far), MARKING)
        for lane in range(1, road.lanes):  # dashed lane lines
            x = lane * road.lane_width_m
            y = near
            while y < 400.0:
                self._fill(image, self._quad(x - half, x + half, y, y + _DASH_M[0]), MARKING)
                y += sum(_DASH_M)
        return image

    def _draw_vehicle(self, image: Image, vehicle: Vehicle, box: Box) -> None:
        left, top = round(box.left), round(box.top)
        right, bottom = round(box.left + box.width), round(box.top + box.height)
        if right <= left or bottom <= top:
            return
        colour = vehicle_colour(vehicle.vehicle_id)
        cv2.rectangle(image, (left, top), (right - 1, bottom - 1), colour, thickness=cv2.FILLED)
        height = bottom - top
        if height >= 6:
            roof = tuple(int(c * 0.6) for c in colour)
            cv2.rectangle(image, (left, top), (right - 1, top + height // 3), roof, thickness=cv2.FILLED)
            glass = (60, 50, 40)
            inset = max(1, (right - left) // 6)
            glass_top = top + height // 3
            glass_bottom = top + height // 2
            if right - inset - 1 > left + inset and glass_bottom > glass_top:
                cv2.rectangle(
                    image, (left + inset, glass_top), (right - inset - 1, glass_bottom), glass, cv2.FILLED
                )
        if right - left >= 4 and height >= 4:
            outline = tuple(int(c * 0.4) for c in colour)
            cv2.rectangle(image, (left, top), (right - 1, bottom - 1), outline, thickness=1)

    def image(self, t: float, sequence: int = 0) -> Image:
        """The BGR image at scene time t (``sequence`` seeds the sensor noise)."""
        image = self.background.copy()
        drawn: list[tuple[float, Vehicle, Box]] = []
        for vehicle in self.scene.present(t):
            if not vehicle.visible(t):
                continue
            box = true_box(vehicle, t, self.scene, self.camera)
            if box is not None:
                drawn.append((vehicle.position(t, self.scene.road)[1], vehicle, box))
        for _, vehicle, box in sorted(drawn, key=lambda item: -item[0]):
            self._draw_vehicle(image, vehicle, box)
        if self.noise > 0:
            # Grey noise (one value per pixel, all channels): cheap, and enough to tell frames apart.
            rng = np.random.default_rng([self.scene.config.seed, 13, sequence])
            span = int(self.noise)
            noise = rng.integers(-span, span + 1, size=(*image.shape[:2], 1), dtype=np.int16)
            image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        return image

    def jpeg(self, t: float, sequence: int = 0) -> bytes:
        """The frame at scene time t as a baseline JPEG."""
        ok, encoded = cv2.imencode(".jpg", self.image(t, sequence), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode the frame")
        return bytes(encoded.tobytes())
