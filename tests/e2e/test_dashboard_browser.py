"""The dashboard in a real headless Chromium (Debian's package), driven over the DevTools protocol.

Against a real console with auth, streaming, alert and analytics on the session's real infrastructure:
the page connects over the WebSocket, renders every component, updates live, draws its charts, lists the
alert feed and thumbnails, shows a stopped service as down, and raises no JavaScript error. A screenshot is
saved to build/test-artifacts/.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import uuid
from base64 import b64decode
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import websockets
from google.protobuf import timestamp_pb2

from itsmesh.v1 import alert_pb2, alert_pb2_grpc, common_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.registry import open_redis
from services.streaming.thumbnails import ThumbnailStore
from tests.integration.auth_stack import bearer
from tests.integration.console_stack import console_stack, registered_instance
from tests.integration.streaming_host import camera

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# A 1x1 JPEG, so the thumbnail <img> really decodes.
PIXEL_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300080606070605080707070909080a0c140d0c0b0b0c1912130f141d"
    "1a1f1e1d1a1c1c20242e2720222c231c1c2837292c30313434341f27393d38323c2e333432ffc0000b080001000101011100ffc4"
    "001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d"
    "01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435"
    "363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798"
    "999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4"
    "f5f6f7f8f9faffda0008010100003f00fbd3ffd9"
)


def _is_script_error(entry: dict[str, Any]) -> bool:
    # Network entries (a favicon 404, a camera without a recent frame) are not script errors.
    return entry.get("source") == "javascript" and entry.get("level") == "error"


class DevTools:
    """One page target over the Chrome DevTools protocol: commands, and the JavaScript errors it reported."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self._socket:
            message = json.loads(raw)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            method, params = message.get("method"), message.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                self.errors.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Log.entryAdded" and _is_script_error(params["entry"]):
                self.errors.append(params["entry"].get("text", ""))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run a command; its result (raises on a protocol error)."""
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, 20)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return dict(answer["result"])

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what or expression} not true within {timeout} s (last: {value!r})")

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._socket.close()


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[DevTools]:
    """A headless Chromium with one blank page; its DevTools session."""
    assert CHROMIUM, "chromium is not installed (Debian: apt-get install -y chromium)"
    process = subprocess.Popen(  # a browser for the whole test; the path is the system's
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # runs as root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1400,1800",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert process.poll() is None, f"chromium exited with {process.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        async with httpx.AsyncClient(timeout=10) as http:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        page = next(t for t in targets if t["type"] == "page")
        socket = await websockets.connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)
        devtools = DevTools(socket)
        try:
            for domain in ("Runtime", "Log", "Page"):
                await devtools.send(f"{domain}.enable")
            yield devtools
        finally:
            await devtools.close()
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


async def seed(stack: Any, infra: Any, operator: str) -> tuple[str, str]:
    """A registered camera with a thumbnail and a firing alert; their ids."""
    camera_id = f"cam-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.services['streaming'].grpc_port}") as channel:
        await streaming_pb2_grpc.StreamingServiceStub(channel).RegisterCamera(
            streaming_pb2.RegisterCameraRequest(camera=camera(camera_id)),
            metadata=bearer(operator),
            timeout=10,
        )
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    redis = open_redis(infra.redis_url)
    try:
        frame = streaming_pb2.LatestFrame(
            camera_id=camera_id, sequence=1, capture_time=stamp, jpeg=PIXEL_JPEG
        )
        await ThumbnailStore(redis).put(frame)
    finally:
        await redis.aclose()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.services['alert'].grpc_port}") as channel:
        answer = await alert_pb2_grpc.AlertServiceStub(channel).RaiseAlert(
            alert_pb2.RaiseAlertRequest(
                client_alert_id=uuid.uuid4().hex,
                labels={"kind": "camera_offline", "camera_id": camera_id},
                annotations={"summary": f"camera {camera_id} offline"},
                severity=common_pb2.SEVERITY_CRITICAL,
                source="tests",
            ),
            metadata=bearer(operator),
            timeout=10,
        )
    return camera_id, answer.alert.alert_id


async def test_the_dashboard_renders_updates_live_and_shows_a_stopped_service_as_down(infra, tmp_path):
    service = f"dashboardtest{uuid.uuid4().hex[:6]}"
    target = await registered_instance(infra, service)
    name = f"{service}/{target.settings.instance_id}"
    stopped = False
    try:
        async with console_stack(infra) as stack, chromium(tmp_path / "profile") as page:
            viewer, operator = await stack.token("viewer"), await stack.token("operator")
            camera_id, alert_id = await seed(stack, infra, operator)
            await page.send("Page.navigate", url=f"{stack.url}/#token={viewer}")

            # Connected over the WebSocket, and the page keeps changing with each push.
            await page.wait_for("window.itsmeshConsole && window.itsmeshConsole.transport === 'websocket'")
            first = int(await page.wait_for("document.getElementById('meta').dataset.generation"))
            later = await page.wait_for(
                f"Number(document.getElementById('meta').dataset.generation) >= {first + 2}"
                " && document.getElementById('meta').dataset.generation",
                timeout=5,
                what="two more status pushes rendered",
            )
            assert int(later) >= first + 2
            assert await page.evaluate("window.itsmeshConsole.messages") >= 3

            # Every component of the vector has its card, worst first.
            async with stack.client(viewer) as client:
                vector = (await client.get("/api/status")).json()
            names = {c["name"] for c in vector["components"]}
            await page.wait_for(
                f"!!document.querySelector('[data-component=\"{name}\"]')", what="the extra instance"
            )
            shown = set(
                await page.evaluate(
                    "[...document.querySelectorAll('#components [data-component]')]"
                    ".map(e => e.dataset.component)"
                )
            )
            assert names <= shown
            await page.wait_for(
                "document.getElementById('ov-infra').textContent === '3 / 3'", what="infrastructure up"
            )

            # Charts fill from the pushes: every service has a throughput series with a value.
            rps = await page.wait_for(
                "(() => { const s = [...document.querySelectorAll('#legend-rps li[data-series]')]"
                ".filter(e => e.dataset.value !== '');"
                " return s.length >= 3 && s.map(e => e.dataset.series); })()",
                timeout=10,
                what="throughput series for the services",
            )
            assert {"streaming", "alert", "analytics"} <= set(rps)
            assert (
                await page.evaluate("document.querySelectorAll('#legend-frames li[data-series]').length") == 1
            )

            # The alert feed and the thumbnail grid read the services with the viewer's token.
            await page.wait_for(
                f"!!document.querySelector('#alerts [data-alert-id=\"{alert_id}\"]')", what="alert in feed"
            )
            await page.wait_for(
                f"(() => {{ const img = document.querySelector('[data-camera=\"{camera_id}\"] img');"
                " return img && img.complete && img.naturalWidth > 0; })()",
                what="the camera's thumbnail decoded",
            )
            # A critical alert firing pages the on-call: the verdict turns red and says why.
            await page.wait_for(
                "document.getElementById('verdict').dataset.level === 'down'",
                what="critical alert in the verdict",
            )
            problems = await page.evaluate("document.getElementById('problems').textContent")
            assert "critical alert" in problems, "the database may hold other tests' alerts too"

            await target.stop()
            stopped = True
            went_down = time.monotonic()
            await page.wait_for(
                f"document.querySelector('[data-component=\"{name}\"]').dataset.status === 'down'",
                timeout=5,
                what="the stopped instance shown as down",
            )
            assert time.monotonic() - went_down < 5
            assert await page.evaluate("document.getElementById('verdict').dataset.level") == "down"
            assert name in await page.evaluate("document.getElementById('problems').textContent")
            first_card = await page.evaluate(
                "document.querySelector('#components [data-component]').dataset.status"
            )
            assert first_card == "down", "what is broken comes first"

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = await page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            (ARTIFACTS / "dashboard.png").write_bytes(b64decode(shot["data"]))
            assert page.errors == [], page.errors
    finally:
        if not stopped:
            with contextlib.suppress(Exception):
                await target.stop()


async def test_an_operator_acknowledges_from_the_feed_and_a_viewer_is_told_why_not(infra, tmp_path):
    async with console_stack(infra, services=("alert",)) as stack, chromium(tmp_path / "profile") as page:
        viewer, operator = await stack.token("viewer"), await stack.token("operator")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.services['alert'].grpc_port}") as channel:
            raised = await alert_pb2_grpc.AlertServiceStub(channel).RaiseAlert(
                alert_pb2.RaiseAlertRequest(
                    client_alert_id=uuid.uuid4().hex,
                    labels={"kind": "camera_offline", "camera_id": f"cam-{uuid.uuid4().hex[:8]}"},
                    annotations={"summary": "camera offline"},
                    severity=common_pb2.SEVERITY_HIGH,
                    source="tests",
                ),
                metadata=bearer(operator),
                timeout=10,
            )
        item = f'#alerts [data-alert-id="{raised.alert.alert_id}"]'
        for token, role in ((viewer, "viewer"), (operator, "operator")):
            await page.send("Page.navigate", url="about:blank")  # a fresh page load for each user
            await page.send("Page.navigate", url=f"{stack.url}/#token={token}")
            await page.wait_for(
                f"!!document.querySelector('{item} button')", what=f"alert in the {role}'s feed"
            )
            await page.evaluate(f"document.querySelector('{item} button').click()")
            if role == "viewer":
                note = await page.wait_for("document.getElementById('ack-note').textContent", what="a note")
                assert "operator" in note
        await page.wait_for(
            f"document.querySelector('{item}').classList.contains('acknowledged')",
            what="the alert shown acknowledged",
        )
        assert not await page.evaluate(f"!!document.querySelector('{item} button')")
        assert page.errors == [], page.errors
