"""Detections published to a real broker become passages and metric windows in PostgreSQL, once: replays
change nothing, and an instance restarted mid-stream neither loses nor repeats a passage. The camera's
configuration comes from a real streaming service (GetCamera) and follows its config-changed events."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections import Counter
from typing import Any

import asyncpg
from aiokafka.partitioner import murmur2
from google.protobuf import field_mask_pb2

from itsmesh.v1 import analytics_pb2, common_pb2, streaming_pb2
from mesh.events import CAMERA_EVENTS_TOPIC
from services.analytics.testing import Scene, build_scene, scene_config
from tests.integration.analytics_host import (
    Topics,
    analytics_host,
    analytics_stub,
    camera_proto,
    detection_event,
    eventually,
    publish_all,
)
from tests.integration.streaming_host import streaming_host
from tests.integration.streaming_host import stub as streaming_stub


async def _registered_scene(streaming: Any, seed: int = 1) -> tuple[Scene, int]:
    camera_id = f"cam-{uuid.uuid4().hex[:10]}"
    scene = build_scene(seed, config=dataclasses.replace(scene_config(), camera_id=camera_id))
    async with streaming_stub(streaming) as client:
        camera = await client.RegisterCamera(
            streaming_pb2.RegisterCameraRequest(camera=camera_proto(scene.config))
        )
    return scene, camera.config_version


async def _passages(pg: asyncpg.Connection, camera_id: str) -> list[asyncpg.Record]:
    return await pg.fetch("SELECT * FROM analytics.vehicle_passages WHERE camera_id = $1", camera_id)


def _by_lane(rows: list[Any]) -> Counter[tuple[str, str]]:
    return Counter(
        (r["lane"], r["direction"]) if isinstance(r, asyncpg.Record) else (r.lane, r.direction) for r in rows
    )


async def _status(host: Any) -> analytics_pb2.PipelineStatus:
    async with analytics_stub(host) as stub:
        return await stub.GetPipelineStatus(analytics_pb2.GetPipelineStatusRequest())


async def test_detections_become_passages_and_metrics_once(infra, pg) -> None:
    topics = Topics.fresh()
    await topics.create(infra.kafka_bootstrap_servers)
    async with streaming_host(infra) as streaming:
        scene, version = await _registered_scene(streaming)
        camera_id = scene.config.camera_id
        events = [detection_event(f, version) for f in scene.frames]
        async with analytics_host(
            infra, topics, streaming=streaming, idle_flush_s=1.0, relay_alerts=False
        ) as host:
            await publish_all(infra.kafka_bootstrap_servers, topics.detections, events, lambda e: e.camera_id)

            async def all_counted() -> bool:
                return len(await _passages(pg, camera_id)) >= len(scene.truth)

            await eventually(all_counted, timeout=60, what="every crossing")
            passages = await _passages(pg, camera_id)
            assert _by_lane(passages) == _by_lane(scene.truth)
            windows = await pg.fetchval(
                "SELECT sum(vehicle_count) FROM analytics.traffic_metrics "
                "WHERE camera_id = $1 AND lane = '' AND zone = ''",
                camera_id,
            )
            assert windows == len(scene.truth)
            rolled = await pg.fetchval(
                "SELECT sum(vehicle_count) FROM analytics.traffic_rollup_1m "
                "WHERE camera_id = $1 AND lane = ''",
                camera_id,
            )
            assert rolled == windows
            # the whole stream again, as after a producer retry: nothing new
            before = (await _status(host)).events_duplicate_total
            await publish_all(infra.kafka_bootstrap_servers, topics.detections, events, lambda e: e.camera_id)

            async def replay_seen() -> bool:
                return (await _status(host)).events_duplicate_total >= before + len(events)

            await eventually(replay_seen, timeout=60, what="the replay")
            assert len(await _passages(pg, camera_id)) == len(scene.truth)
            status = await _status(host)
            assert sum(p.lag for p in status.partitions) == 0


async def test_restart_mid_stream_neither_loses_nor_repeats_passages(infra, pg) -> None:
    topics = Topics.fresh()
    await topics.create(infra.kafka_bootstrap_servers)
    group = f"analytics-{uuid.uuid4().hex[:8]}"
    async with streaming_host(infra) as streaming:
        scene, version = await _registered_scene(streaming, seed=2)
        camera_id = scene.config.camera_id
        # stop where no vehicle is within a second and a half of the counting line
        crossings = sorted(t.crossing_s for t in scene.truth)
        split_s = next((a + b) / 2 for a, b in itertools.pairwise(crossings) if b - a > 3.0 and a > 10.0)
        start = scene.frames[0].capture_time
        first = [f for f in scene.frames if (f.capture_time - start).total_seconds() < split_s]
        rest = scene.frames[len(first) :]
        settings: dict[str, Any] = {"streaming": streaming, "group": group, "relay_alerts": False}
        async with analytics_host(infra, topics, idle_flush_s=30.0, **settings) as host:
            await publish_all(
                infra.kafka_bootstrap_servers,
                topics.detections,
                [detection_event(f, version) for f in first],
                lambda e: e.camera_id,
            )

            async def first_part_done() -> bool:
                return (await _status(host)).events_processed_total >= len(first)

            await eventually(first_part_done, timeout=60, what="the first part")
        counted_before = len(await _passages(pg, camera_id))
        assert 0 < counted_before < len(scene.truth)
        async with analytics_host(infra, topics, idle_flush_s=1.0, **settings):
            await publish_all(
                infra.kafka_bootstrap_servers,
                topics.detections,
                [detection_event(f, version) for f in rest],
                lambda e: e.camera_id,
            )

            async def all_counted() -> bool:
                return len(await _passages(pg, camera_id)) >= len(scene.truth)

            await eventually(all_counted, timeout=60, what="every crossing after the restart")
        passages = await _passages(pg, camera_id)
        assert len(passages) == len(scene.truth)
        assert _by_lane(passages) == _by_lane(scene.truth)


async def test_pipeline_follows_config_changed_events(infra) -> None:
    topics = dataclasses.replace(Topics.fresh(), camera_events=CAMERA_EVENTS_TOPIC)
    await topics.create(infra.kafka_bootstrap_servers)
    async with streaming_host(infra) as streaming:
        scene, version = await _registered_scene(streaming, seed=3)
        camera_id = scene.config.camera_id
        async with analytics_host(infra, topics, streaming=streaming, relay_alerts=False) as host:
            consumer: Any = host.spec.grpc_services[0].servicer.consumer
            await publish_all(
                infra.kafka_bootstrap_servers,
                topics.detections,
                [detection_event(f, version) for f in scene.frames[:50]],
                lambda e: e.camera_id,
            )

            async def tracking() -> bool:
                return camera_id in consumer.pipelines

            await eventually(tracking, what="the camera's pipeline")
            async with streaming_stub(streaming) as client:
                updated = await client.UpdateCamera(
                    streaming_pb2.UpdateCameraRequest(
                        camera=common_pb2.Camera(camera_id=camera_id, speed_limit_kmh=60.0),
                        update_mask=field_mask_pb2.FieldMask(paths=["speed_limit_kmh"]),
                    )
                )

            async def reconfigured() -> bool:
                config = consumer.pipelines[camera_id].config
                return bool(
                    config.config_version == updated.config_version and config.speed_limit_kmh == 60.0
                )

            await eventually(reconfigured, what="the config-changed event to reach the pipeline")


def _one_camera_per_partition(partitions: int) -> list[str]:
    """Camera ids whose records land on partitions 0 … partitions-1 (the producer's murmur2 partitioner)."""
    found: dict[int, str] = {}
    while len(found) < partitions:
        camera_id = f"cam-{uuid.uuid4().hex[:10]}"
        found.setdefault((murmur2(camera_id.encode()) & 0x7FFFFFFF) % partitions, camera_id)
    return [found[p] for p in range(partitions)]


async def test_a_second_instance_takes_over_partitions_without_losing_or_repeating(infra, pg) -> None:
    topics = Topics.fresh()
    await topics.create(infra.kafka_bootstrap_servers, partitions=3)
    group = f"analytics-{uuid.uuid4().hex[:8]}"
    async with streaming_host(infra) as streaming:
        base = build_scene(4)
        scenes = []
        async with streaming_stub(streaming) as client:
            for camera_id in _one_camera_per_partition(3):
                scene = build_scene(4, config=dataclasses.replace(base.config, camera_id=camera_id))
                camera = await client.RegisterCamera(
                    streaming_pb2.RegisterCameraRequest(camera=camera_proto(scene.config))
                )
                scenes.append((scene, camera.config_version))
        crossings = sorted(t.crossing_s for t in base.truth)
        split_s = next((a + b) / 2 for a, b in itertools.pairwise(crossings) if b - a > 3.0 and a > 10.0)
        start = base.frames[0].capture_time

        def part(first: bool) -> list[Any]:
            return [
                detection_event(f, version)
                for scene, version in scenes
                for f in scene.frames
                if ((f.capture_time - start).total_seconds() < split_s) == first
            ]

        settings: dict[str, Any] = {"streaming": streaming, "group": group, "relay_alerts": False}
        async with analytics_host(infra, topics, idle_flush_s=2.0, **settings) as first:
            early = part(True)
            await publish_all(infra.kafka_bootstrap_servers, topics.detections, early, lambda e: e.camera_id)

            async def first_part_done() -> bool:
                return (await _status(first)).events_processed_total >= len(early)

            await eventually(first_part_done, timeout=90, what="the first part")
            async with analytics_host(infra, topics, idle_flush_s=2.0, **settings) as second:

                async def shared() -> bool:
                    mine, theirs = await _status(first), await _status(second)
                    detections = [
                        p for s in (mine, theirs) for p in s.partitions if p.topic == topics.detections
                    ]
                    return len(detections) == 3 and all(
                        any(p.topic == topics.detections for p in s.partitions) for s in (mine, theirs)
                    )

                await eventually(shared, timeout=60, what="the partitions to be shared")
                late = part(False)
                await publish_all(
                    infra.kafka_bootstrap_servers, topics.detections, late, lambda e: e.camera_id
                )
                for scene, _ in scenes:
                    camera_id = scene.config.camera_id

                    async def counted(camera_id: str = camera_id, expected: int = len(scene.truth)) -> bool:
                        return len(await _passages(pg, camera_id)) >= expected

                    await eventually(counted, timeout=90, what=f"every crossing of {camera_id}")
                assert (await _status(second)).events_processed_total > 0
        for scene, _ in scenes:
            passages = await _passages(pg, scene.config.camera_id)
            assert len(passages) == len(scene.truth)
            assert _by_lane(passages) == _by_lane(scene.truth)
