"""Loopback ports of the embedded servers: defaults, free-port checks and picking free ports for tests."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

from ._errors import InfraError

LOOPBACK = "127.0.0.1"

#: Environment variables an operator may set to move a component to another port.
PORT_ENV_VARS: Mapping[str, str] = {
    "postgres": "ITSMESH_PG_PORT",
    "redis": "ITSMESH_REDIS_PORT",
    "kafka": "ITSMESH_KAFKA_PORT",
}


@dataclass(frozen=True, slots=True)
class InfraPorts:
    """Loopback ports the embedded servers listen on; the defaults stay clear of the standard ones."""

    postgres: int = 15432
    redis: int = 16379
    kafka: int = 19092

    def __post_init__(self) -> None:
        for component in PORT_ENV_VARS:
            port = getattr(self, component)
            if not 1 <= port <= 65535:
                raise ValueError(f"{component} port must be within 1..65535, got {port}")


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could bind host:port now.

    SO_REUSEADDR mirrors what the servers themselves set, so a port that only has connections in
    TIME_WAIT counts as free while a port with a listener (on this address or on 0.0.0.0) does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def ensure_port_free(component: str, port: int, url_env_var: str) -> None:
    """Raise InfraError naming the component and the way out when its port is taken."""
    if not port_is_free(port):
        raise InfraError(
            component,
            f"port {port} is already in use — stop whatever holds it "
            f"or set {PORT_ENV_VARS[component]} / {url_env_var}",
        )


def free_ports() -> InfraPorts:
    """Three distinct loopback ports that are free right now (for tests; another process may still race)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        postgres, redis, kafka = (sock.getsockname()[1] for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    return InfraPorts(postgres=postgres, redis=redis, kafka=kafka)
