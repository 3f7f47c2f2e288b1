"""The camera registry through real gRPC against PostgreSQL and the Kafka-protocol broker."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2
from mesh.events import CAMERA_EVENTS_TOPIC
from mesh.status import status_details
from tests.integration.streaming_host import camera, records, streaming_host, stub

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def host(infra):
    async with streaming_host(infra) as running:
        yield running


def _changes(found) -> list[events_pb2.CameraConfigChanged]:
    events = [events_pb2.CameraEvent.FromString(r.value) for r in found]
    return [e.config_changed for e in events if e.WhichOneof("kind") == "config_changed"]


async def test_register_get_update_delete_publish_config_changed_events(host, kafka_bootstrap):
    new = camera(labels={"group": "downtown"})
    async with stub(host) as client:
        registered = await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new))
        assert registered.config_version == 1
        assert registered.etag
        assert (await client.GetCamera(streaming_pb2.GetCameraRequest(camera_id=new.camera_id))) == registered
        changed = common_pb2.Camera(camera_id=new.camera_id, fps=25.0, etag=registered.etag)
        updated = await client.UpdateCamera(
            streaming_pb2.UpdateCameraRequest(
                camera=changed, update_mask=field_mask_pb2.FieldMask(paths=["fps"])
            )
        )
        assert (updated.fps, updated.config_version, updated.name) == (25.0, 2, new.name)
        await client.DeleteCamera(streaming_pb2.DeleteCameraRequest(camera_id=new.camera_id))
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await client.GetCamera(streaming_pb2.GetCameraRequest(camera_id=new.camera_id))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    found = await records(
        kafka_bootstrap, CAMERA_EVENTS_TOPIC, new.camera_id, lambda f: len(_changes(f)) >= 3
    )
    changes = _changes(found)
    assert [c.change_type for c in changes] == [
        events_pb2.CONFIG_CHANGE_TYPE_CREATED,
        events_pb2.CONFIG_CHANGE_TYPE_UPDATED,
        events_pb2.CONFIG_CHANGE_TYPE_DELETED,
    ]
    assert changes[1].changed_fields == ["fps"]
    assert changes[1].camera.fps == 25.0
    headers = dict(found[0].headers)
    assert headers["schema"] == b"itsmesh.v1.CameraEvent"


async def test_registering_a_taken_id_is_already_exists(host):
    new = camera()
    async with stub(host) as client:
        await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new))
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new))
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"fps": 0.0}, "camera.fps"),
        ({"speed_limit_kmh": -5.0}, "camera.speed_limit_kmh"),
        ({"resolution": common_pb2.ImageSize(width_px=8, height_px=360)}, "camera.resolution.width_px"),
        ({"name": ""}, "camera.name"),
        ({"camera_id": "Bad Id"}, "camera.camera_id"),
        (
            {
                "calibration": common_pb2.Calibration(
                    point_pairs=[common_pb2.CalibrationPointPair() for _ in range(3)]
                )
            },
            "camera.calibration.point_pairs",
        ),
        (
            {
                "zones": [
                    common_pb2.Zone(
                        zone_id="z1",
                        kind=common_pb2.ZONE_KIND_DETECTION,
                        area=common_pb2.Polygon(
                            vertices=[
                                common_pb2.ImagePoint(x_px=0, y_px=0),
                                common_pb2.ImagePoint(x_px=900, y_px=0),
                                common_pb2.ImagePoint(x_px=0, y_px=100),
                            ]
                        ),
                    )
                ]
            },
            "camera.zones[0].area.vertices",
        ),
    ],
)
async def test_invalid_camera_is_invalid_argument_naming_the_field(host, overrides, field):
    async with stub(host) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=camera(**overrides)))
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [name for name, _ in details.field_violations]


async def test_update_with_a_stale_etag_is_aborted_and_an_empty_mask_invalid(host):
    new = camera()
    async with stub(host) as client:
        first = await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new))
        mask = field_mask_pb2.FieldMask(paths=["name"])
        await client.UpdateCamera(
            streaming_pb2.UpdateCameraRequest(
                camera=common_pb2.Camera(camera_id=new.camera_id, name="x"), update_mask=mask
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as stale:
            await client.UpdateCamera(
                streaming_pb2.UpdateCameraRequest(
                    camera=common_pb2.Camera(camera_id=new.camera_id, name="y", etag=first.etag),
                    update_mask=mask,
                )
            )
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await client.UpdateCamera(
                streaming_pb2.UpdateCameraRequest(camera=common_pb2.Camera(camera_id=new.camera_id))
            )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert [f for f, _ in status_details(empty.value).field_violations] == ["update_mask"]


async def test_list_pages_through_cameras_with_a_label_in_id_order(host):
    group = camera().camera_id
    ids = sorted(camera().camera_id for _ in range(5))
    async with stub(host) as client:
        for camera_id in ids:
            await client.RegisterCamera(
                streaming_pb2.RegisterCameraRequest(camera=camera(camera_id, labels={"group": group}))
            )
        seen, token = [], ""
        while True:
            page = await client.ListCameras(
                streaming_pb2.ListCamerasRequest(page_size=2, page_token=token, labels={"group": group})
            )
            assert page.total_size == 5
            seen.extend(c.camera_id for c in page.cameras)
            token = page.next_page_token
            if not token:
                break
        with pytest.raises(grpc.aio.AioRpcError) as bad_token:
            await client.ListCameras(streaming_pb2.ListCamerasRequest(page_token="nonsense"))
    assert seen == ids
    assert [f for f, _ in status_details(bad_token.value).field_violations] == ["page_token"]
