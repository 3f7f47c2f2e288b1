"""The library every itsmesh service uses: settings, service host, discovery, balancing, resilience."""

from mesh.host import GrpcService, ServiceHost, ServiceSpec
from mesh.settings import InfraSettings, ServiceSettings

__all__ = ["GrpcService", "InfraSettings", "ServiceHost", "ServiceSettings", "ServiceSpec"]
