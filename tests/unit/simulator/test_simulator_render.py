"""Rendered JPEGs show the vehicles exactly where their boxes say."""

from __future__ import annotations

import cv2
import numpy as np

from services.simulator.frames import FrameOptions, camera_frames
from services.simulator.geometry import PinholeCamera
from services.simulator.render import ASPHALT, Renderer, vehicle_colour
from services.simulator.scene import SceneConfig, build_scene

CAMERA = PinholeCamera()
SCENE = build_scene(SceneConfig(seed=4, duration_s=40.0), "cam-r")
RENDERER = Renderer(SCENE, CAMERA)


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_frames_are_real_jpegs_of_the_cameras_resolution() -> None:
    jpeg = RENDERER.jpeg(5.0, 1)
    assert jpeg[:2] == b"\xff\xd8"
    assert jpeg[-2:] == b"\xff\xd9"
    assert decode(jpeg).shape == (CAMERA.height_px, CAMERA.width_px, 3)


def test_vehicle_pixels_are_inside_their_boxes() -> None:
    frames, _ = camera_frames(SCENE, CAMERA, FrameOptions(jitter_px=0.0), "cam-r")
    checked = 0
    for frame in frames[::25]:
        image = decode(RENDERER.jpeg(frame.t, frame.sequence)).astype(float)
        boxes = [d.true_box for d in frame.detections]
        for detection in frame.detections:
            box = detection.true_box
            if box.width < 16 or box.height < 16:
                continue
            # The lowest quarter of the box is plain body colour (roof and glass sit higher up), unless a
            # nearer vehicle is drawn over it.
            left, right = int(box.left) + 3, int(box.left + box.width) - 3
            bottom = int(box.top + box.height) - 2
            top = bottom - int(box.height / 4) + 2
            covered = any(
                other is not box
                and other.top + other.height > box.top + box.height
                and other.left < right
                and other.left + other.width > left
                for other in boxes
            )
            if covered or bottom <= top:
                continue
            patch = image[top:bottom, left:right].reshape(-1, 3).mean(axis=0)
            assert np.abs(patch - np.array(vehicle_colour(detection.vehicle_id))).max() < 20, detection
            checked += 1
    assert checked >= 5


def test_the_road_is_plain_asphalt_where_no_box_is() -> None:
    frames, _ = camera_frames(SCENE, CAMERA, FrameOptions(jitter_px=0.0), "cam-r")
    frame = frames[len(frames) // 2]
    mask = np.zeros((CAMERA.height_px, CAMERA.width_px), dtype=bool)
    # Everything a vehicle could cover, including ones too near or far to be reported.
    for vehicle in SCENE.present(frame.t):
        from services.simulator.frames import true_box

        box = true_box(vehicle, frame.t, SCENE, CAMERA)
        if box is not None:
            mask[
                max(0, int(box.top) - 2) : int(box.top + box.height) + 3,
                max(0, int(box.left) - 2) : int(box.left + box.width) + 3,
            ] = True
    image = decode(RENDERER.jpeg(frame.t, frame.sequence)).astype(float)
    # A strip of the middle of lane 1 and 2 around the counting line (no markings there).
    for x in (1.75 + 3.5, 1.75):
        for y in (30.0, 45.0, 60.0):
            u, v = CAMERA.project(x, y)
            if mask[int(v) - 2 : int(v) + 3, int(u) - 2 : int(u) + 3].any():
                continue
            patch = image[int(v) - 1 : int(v) + 2, int(u) - 1 : int(u) + 2].reshape(-1, 3).mean(axis=0)
            assert np.abs(patch - np.array(ASPHALT)).max() < 12


def test_consecutive_frames_differ_even_without_traffic() -> None:
    empty = build_scene(
        SceneConfig(
            seed=4,
            duration_s=10.0,
            vehicles_per_minute=0.0,
            wrong_way=False,
            stopping=False,
            lane_change=False,
            occlusion=False,
        ),
        "cam-e",
    )
    renderer = Renderer(empty, CAMERA)
    a, b = decode(renderer.jpeg(1.0, 1)), decode(renderer.jpeg(1.1, 2))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.5
