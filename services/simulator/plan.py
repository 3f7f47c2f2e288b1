"""Everything a run will do, decided up front from its options: pure, so a seed reproduces a run.

``build_plan`` gives each camera its scene, pinhole camera, registration and frame stream, and the GPS
fleet its devices; ``truth_records`` turns the plan into the ground-truth records for a start time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from itsmesh.v1 import common_pb2
from services.simulator.camera_config import build_camera, counting_line
from services.simulator.frames import FrameOptions, ScheduleStats, SimFrame, iter_frames
from services.simulator.geometry import PinholeCamera
from services.simulator.gps import Fleet, FleetConfig, build_fleet
from services.simulator.render import Renderer
from services.simulator.scene import RoadConfig, Scene, SceneConfig, build_scene
from services.simulator.truth import CameraTruth, camera_records, fleet_records


@dataclass(frozen=True, slots=True)
class SimulationOptions:
    """The knobs of ``itsmesh simulate`` (each has a CLI flag)."""

    cameras: int = 2
    devices: int = 3
    fps: float = 10.0
    duration_s: float = 60.0
    seed: int = 1
    vehicles_per_minute: float = 40.0
    drop_rate: float = 0.1
    irregular: float = 0.25
    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.0
    jitter_px: float = 1.5
    edge_detections: bool = True
    two_way: bool = False
    readings_per_second: float = 1.0
    width_px: int = 960
    """960x540 by default: there a 1 s least-squares speed fit meets the analytics targets (README)."""
    height_px: int = 540
    prefix: str = "sim"


@dataclass(slots=True)
class CameraPlan:
    """One simulated camera."""

    camera_id: str
    scene: Scene
    camera: PinholeCamera
    registration: common_pb2.Camera
    frame_options: FrameOptions
    renderer: Renderer = field(repr=False)

    def frames(self) -> tuple[Iterator[SimFrame], ScheduleStats]:
        """Its frames in sending order (lazily) and the schedule statistics."""
        return iter_frames(self.scene, self.camera, self.frame_options, self.camera_id)


@dataclass(slots=True)
class Plan:
    """A whole run."""

    options: SimulationOptions
    cameras: list[CameraPlan]
    fleet: Fleet


def build_plan(options: SimulationOptions) -> Plan:
    """Cameras and devices of a run, deterministic in ``options``."""
    road = RoadConfig(two_way=options.two_way)
    frame_options = FrameOptions(
        fps=options.fps,
        drop_rate=options.drop_rate,
        irregular=options.irregular,
        duplicate_rate=options.duplicate_rate,
        out_of_order_rate=options.out_of_order_rate,
        jitter_px=options.jitter_px,
        edge_detections=options.edge_detections,
    )
    # Focal length scales with the image so every resolution shows the same stretch of road.
    focal = 600.0 * options.width_px / 640
    cameras = []
    for i in range(options.cameras):
        camera_id = f"{options.prefix}-cam-{i + 1:02d}"
        pinhole = PinholeCamera(width_px=options.width_px, height_px=options.height_px, focal_px=focal)
        scene = build_scene(
            SceneConfig(
                seed=options.seed,
                duration_s=options.duration_s,
                road=road,
                vehicles_per_minute=options.vehicles_per_minute,
            ),
            camera_id,
        )
        registration = build_camera(
            camera_id,
            pinhole,
            road,
            fps=options.fps,
            edge_detection=options.edge_detections,
            location=(52.50 + 0.01 * i, 13.40),
        )
        cameras.append(
            CameraPlan(camera_id, scene, pinhole, registration, frame_options, Renderer(scene, pinhole))
        )
    fleet = build_fleet(
        FleetConfig(
            seed=options.seed,
            devices=options.devices,
            duration_s=options.duration_s,
            readings_per_second=options.readings_per_second,
        ),
        prefix=f"{options.prefix}-gps",
    )
    return Plan(options, cameras, fleet)


def truth_records(
    plan: Plan, start_time: float, run_id: str, sequence_base: int = 0
) -> Iterator[dict[str, Any]]:
    """Every ground-truth record of a run that starts (scene time 0) at Unix time ``start_time``.

    Frames and readings are sent with ``sequence_base`` added to the plan's sequences.
    """
    yield {
        "type": "run",
        "run_id": run_id,
        "start_time": start_time,
        "sequence_base": sequence_base,
        "options": dataclasses.asdict(plan.options),
    }
    for camera in plan.cameras:
        _, stats = camera.frames()
        line = counting_line(camera.camera, camera.scene.road)
        yield from camera_records(
            CameraTruth(camera.camera_id, camera.scene, camera.camera, line, stats), start_time
        )
    yield from fleet_records(plan.fleet, start_time)
