"""Embedded PostgreSQL, Redis-compatible server and Kafka-protocol broker for one machine.

    async with EmbeddedInfra(Path(".itsmesh"), on_status=print_progress) as urls:
        run_services(urls.database_url, urls.redis_url, urls.kafka_bootstrap_servers)

Servers come from the ``itsmesh[embedded]`` extra; a component whose URL variable is set in the
environment is used as it is.
"""

from __future__ import annotations

from ._errors import InfraError
from ._launcher import COMPONENTS, EmbeddedInfra, InfraUrls
from ._ports import InfraPorts, free_ports
from .binaries import locate_binary, require_binary

__all__ = [
    "COMPONENTS",
    "EmbeddedInfra",
    "InfraError",
    "InfraPorts",
    "InfraUrls",
    "free_ports",
    "locate_binary",
    "require_binary",
]
