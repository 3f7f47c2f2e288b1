"""The library every itsmesh service uses: settings, service host, discovery, balancing, resilience.

A service needs only these names; everything else in `mesh` is an implementation detail.
"""

from mesh.client import ClientConfig, MeshClient, ServicePolicy, StaticEndpoints
from mesh.deadline import deadline_scope
from mesh.endpoints import Instance
from mesh.errors import CircuitOpenError, MeshDeadlineExceeded, MeshError, NoEndpointsError
from mesh.host import GrpcService, ServiceHost, ServiceSpec
from mesh.interceptors import client_interceptors, current_principal, server_interceptors
from mesh.registry import Registration, Watcher
from mesh.settings import InfraSettings, ServiceSettings
from mesh.status import abort_with, status_error

__all__ = [
    "CircuitOpenError",
    "ClientConfig",
    "GrpcService",
    "InfraSettings",
    "Instance",
    "MeshClient",
    "MeshDeadlineExceeded",
    "MeshError",
    "NoEndpointsError",
    "Registration",
    "ServiceHost",
    "ServicePolicy",
    "ServiceSettings",
    "ServiceSpec",
    "StaticEndpoints",
    "Watcher",
    "abort_with",
    "client_interceptors",
    "current_principal",
    "deadline_scope",
    "server_interceptors",
    "status_error",
]
