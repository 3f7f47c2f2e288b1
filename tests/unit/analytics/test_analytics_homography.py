"""Image ↔ road-plane homography from calibration point pairs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from services.analytics.homography import CalibrationError, Homography
from services.analytics.testing import PinholeCamera

CAM = PinholeCamera()
WORLD = [(-8.0, 15.0), (8.0, 15.0), (-8.0, 120.0), (8.0, 120.0)]


def _image(points):
    return [CAM.project(x, y) for x, y in points]


def test_four_pairs_map_road_points_exactly():
    h = Homography.from_pairs(_image(WORLD), WORLD)
    for x, y in [(0.0, 50.0), (3.5, 80.0), (-5.0, 20.0), (7.0, 140.0)]:
        u, v = CAM.project(x, y)
        wx, wy = h.to_world(u, v)
        assert wx == pytest.approx(x, abs=1e-6)
        assert wy == pytest.approx(y, abs=1e-6)
    assert h.reprojection_error_px < 1e-6


def test_inverse_and_vectorised_mapping_agree():
    h = Homography.from_pairs(_image(WORLD), WORLD)
    pts = np.array([CAM.project(1.0, 30.0), CAM.project(-2.0, 90.0)])
    world = h.map_many(pts)
    assert world[0] == pytest.approx([1.0, 30.0], abs=1e-6)
    u, v = h.to_image(-2.0, 90.0)
    assert (u, v) == pytest.approx(tuple(pts[1]), abs=1e-6)


def test_more_pairs_are_a_least_squares_fit_of_noisy_clicks():
    rng = random.Random(3)
    world = [(x, y) for x in (-8.0, 0.0, 8.0) for y in (15.0, 40.0, 80.0, 120.0)]
    image = [(u + rng.gauss(0, 0.5), v + rng.gauss(0, 0.5)) for u, v in _image(world)]
    h = Homography.from_pairs(image, world)
    wx, wy = h.to_world(*CAM.project(2.0, 50.0))
    assert abs(wx - 2.0) < 0.1
    assert abs(wy - 50.0) < 0.5
    assert 0.1 < h.reprojection_error_px < 1.5


def test_scale_grows_with_distance():
    h = Homography.from_pairs(_image(WORLD), WORLD)
    near, far = h.scale_many(np.array([CAM.project(0.0, 20.0), CAM.project(0.0, 100.0)]))
    assert far[1] > 10 * near[1]  # metres per pixel along the road explode with distance


@pytest.mark.parametrize(
    ("image", "world"),
    [
        (_image(WORLD[:3]), WORLD[:3]),
        ([(0.0, 0.0), (10.0, 0.0), (20.0, 0.0), (5.0, 9.0)], WORLD),
        (_image(WORLD), [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (0.0, 5.0)]),
    ],
)
def test_too_few_or_collinear_points_are_rejected(image, world):
    with pytest.raises(CalibrationError):
        Homography.from_pairs(image, world)
