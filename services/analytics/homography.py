"""Image ↔ road-plane homography fitted from calibration point pairs (normalised DLT, least squares).

A box's bottom-centre is where the object touches the road, so it maps through this homography to metres
on the road plane; positions and speeds are computed there, never in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Point = tuple[float, float]
FloatArray = npt.NDArray[np.float64]


class CalibrationError(ValueError):
    """The point pairs do not determine a homography (too few, or degenerate)."""


def _normaliser(points: FloatArray) -> FloatArray:
    # Hartley normalisation: centroid to the origin, mean distance sqrt(2); keeps the SVD well conditioned.
    centre = points.mean(axis=0)
    spread = np.sqrt(((points - centre) ** 2).sum(axis=1)).mean()
    if spread <= 0:
        raise CalibrationError("calibration points coincide")
    s = np.sqrt(2.0) / spread
    return np.array([[s, 0.0, -s * centre[0]], [0.0, s, -s * centre[1]], [0.0, 0.0, 1.0]])


def _has_collinear_triple(points: FloatArray) -> bool:
    size = float(np.ptp(points, axis=0).max()) or 1.0
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            for k in range(j + 1, len(points)):
                a, b, c = points[i], points[j], points[k]
                area = abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
                if area < 1e-6 * size * size:
                    return True
    return False


def fit_homography(image: Sequence[Point], world: Sequence[Point]) -> FloatArray:
    """The 3x3 matrix H with world ~ H · image, from at least 4 correspondences (least squares beyond 4)."""
    if len(image) != len(world):
        raise CalibrationError("image and world point lists differ in length")
    if len(image) < 4:
        raise CalibrationError("a homography needs at least 4 point pairs")
    src = np.asarray(image, dtype=np.float64)
    dst = np.asarray(world, dtype=np.float64)
    if len(image) == 4 and (_has_collinear_triple(src) or _has_collinear_triple(dst)):
        raise CalibrationError("three of the four calibration points are collinear")
    ts, td = _normaliser(src), _normaliser(dst)
    src_n = (ts @ np.column_stack([src, np.ones(len(src))]).T).T
    dst_n = (td @ np.column_stack([dst, np.ones(len(dst))]).T).T
    rows = []
    for (x, y, _), (u, v, _) in zip(src_n, dst_n, strict=True):
        rows.append([-x, -y, -1.0, 0.0, 0.0, 0.0, u * x, u * y, u])
        rows.append([0.0, 0.0, 0.0, -x, -y, -1.0, v * x, v * y, v])
    a = np.asarray(rows)
    _, singular, vt = np.linalg.svd(a)
    # Rank 8 is required: the two smallest singular values must be well separated.
    if singular[-2] < 1e-9 * singular[0]:
        raise CalibrationError("calibration points are degenerate (three or more collinear)")
    h_n = vt[-1].reshape(3, 3)
    h = np.linalg.inv(td) @ h_n @ ts
    if abs(h[2, 2]) < 1e-12:
        raise CalibrationError("calibration maps a point to infinity")
    result: FloatArray = h / h[2, 2]
    return result


class Homography:
    """A fitted image → road-plane mapping, with its inverse and local scale."""

    __slots__ = ("_h", "_h_tuple", "_inv", "reprojection_error_px")

    def __init__(self, matrix: FloatArray, reprojection_error_px: float = 0.0) -> None:
        self._h = np.asarray(matrix, dtype=np.float64)
        self._inv: FloatArray = np.asarray(np.linalg.inv(self._h), dtype=np.float64)
        self._h_tuple = tuple(float(v) for v in self._h.ravel())
        self.reprojection_error_px = reprojection_error_px

    @classmethod
    def from_pairs(cls, image: Sequence[Point], world: Sequence[Point]) -> Homography:
        """Fit from correspondences; records the RMS reprojection error in pixels."""
        h = fit_homography(image, world)
        inverse = cls(np.asarray(np.linalg.inv(h), dtype=np.float64))
        back = inverse.map_many(np.asarray(world, dtype=np.float64))
        err = float(np.sqrt(((back - np.asarray(image, dtype=np.float64)) ** 2).sum(axis=1).mean()))
        return cls(h, err)

    @property
    def matrix(self) -> FloatArray:
        """The 3x3 matrix (image → world)."""
        return self._h

    def inverse(self) -> Homography:
        """The world → image mapping."""
        return Homography(self._inv)

    def to_world(self, x: float, y: float) -> Point:
        """One image point (pixels) on the road plane (metres)."""
        h0, h1, h2, h3, h4, h5, h6, h7, h8 = self._h_tuple
        w = h6 * x + h7 * y + h8
        return ((h0 * x + h1 * y + h2) / w, (h3 * x + h4 * y + h5) / w)

    def to_image(self, x: float, y: float) -> Point:
        """One road-plane point (metres) in the image (pixels)."""
        p = self._inv @ np.array([x, y, 1.0])
        return (float(p[0] / p[2]), float(p[1] / p[2]))

    def map_many(self, points: FloatArray) -> FloatArray:
        """Map an (n, 2) array of points."""
        homogeneous = np.column_stack([points, np.ones(len(points))]) @ self._h.T
        mapped: FloatArray = homogeneous[:, :2] / homogeneous[:, 2:3]
        return mapped

    def scale_many(self, points: FloatArray) -> FloatArray:
        """Metres per pixel along world x and world y at each image point: rows of
        (|∂X/∂(u,v)|, |∂Y/∂(u,v)|), used to turn pixel noise into road-plane noise."""
        h = self._h
        u, v = points[:, 0], points[:, 1]
        w = h[2, 0] * u + h[2, 1] * v + h[2, 2]
        x = (h[0, 0] * u + h[0, 1] * v + h[0, 2]) / w
        y = (h[1, 0] * u + h[1, 1] * v + h[1, 2]) / w
        dxdu = (h[0, 0] - x * h[2, 0]) / w
        dxdv = (h[0, 1] - x * h[2, 1]) / w
        dydu = (h[1, 0] - y * h[2, 0]) / w
        dydv = (h[1, 1] - y * h[2, 1]) / w
        result: FloatArray = np.column_stack([np.hypot(dxdu, dxdv), np.hypot(dydu, dydv)])
        return result
