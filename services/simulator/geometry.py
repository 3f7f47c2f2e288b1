"""A pinhole camera over a flat road: projection of 3-D points and the road-plane homography.

World coordinates are metres: x across the road, y along it (away from the camera), z up; the road plane
is z = 0. The camera stands at (x, y, height) looking along +y, pitched down, without roll or yaw, so a
line of constant y on the road is a horizontal line in the image. Image coordinates are pixels, origin
top-left, x right, y down (common.proto ImagePoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PinholeCamera:
    """Intrinsics (focal length, principal point at the image centre) and pose of a camera."""

    width_px: int = 640
    height_px: int = 360
    focal_px: float = 600.0
    x_m: float = 5.25
    y_m: float = 0.0
    height_m: float = 10.0
    pitch_deg: float = 15.0
    _projection: Matrix = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pitch = math.radians(self.pitch_deg)
        s, c = math.sin(pitch), math.cos(pitch)
        # Rows: camera right, down and forward axes in world coordinates (right x down = forward).
        rotation = np.array([[1.0, 0.0, 0.0], [0.0, -s, -c], [0.0, c, -s]])
        centre = np.array([self.x_m, self.y_m, self.height_m])
        intrinsics = np.array(
            [
                [self.focal_px, 0.0, self.width_px / 2.0],
                [0.0, self.focal_px, self.height_px / 2.0],
                [0.0, 0.0, 1.0],
            ]
        )
        extrinsics = np.hstack([rotation, (-rotation @ centre).reshape(3, 1)])
        object.__setattr__(self, "_projection", intrinsics @ extrinsics)

    @property
    def projection(self) -> Matrix:
        """The 3x4 matrix K [R | t]."""
        return self._projection.copy()

    @property
    def homography(self) -> Matrix:
        """World road plane (x, y, 1) → image (u, v, w): the columns of x, y and the translation."""
        return self._projection[:, [0, 1, 3]].copy()

    def depth(self, x: float, y: float, z: float) -> float:
        """Distance of a point in front of the camera along its optical axis (negative behind it)."""
        return float(self._projection[2] @ np.array([x, y, z, 1.0]))

    def project(self, x: float, y: float, z: float = 0.0) -> tuple[float, float]:
        """Image position of a world point (which must lie in front of the camera)."""
        u, v, w = self._projection @ np.array([x, y, z, 1.0])
        return float(u / w), float(v / w)

    def road_point(self, u: float, v: float) -> tuple[float, float]:
        """The road-plane point (z = 0) seen at image position (u, v): the inverse homography."""
        x, y, w = np.linalg.solve(self.homography, np.array([u, v, 1.0]))
        return float(x / w), float(y / w)

    def road_y_at_row(self, v: float) -> float:
        """Road distance y seen at image row v (rows below the horizon only)."""
        return self.road_point(self.width_px / 2.0, v)[1]

    @property
    def horizon_v(self) -> float:
        """Image row of the horizon (where y → infinity)."""
        return self.height_px / 2.0 - self.focal_px * math.tan(math.radians(self.pitch_deg))


def apply_homography(matrix: Matrix, x: float, y: float) -> tuple[float, float]:
    """(x, y) mapped through a 3x3 homography."""
    a, b, w = matrix @ np.array([x, y, 1.0])
    return float(a / w), float(b / w)
