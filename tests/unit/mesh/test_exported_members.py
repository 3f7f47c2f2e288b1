"""The front door of `mesh` is small and deliberate: a new export is a decision, not an accident."""

import mesh

EXPECTED = {
    "StaticEndpoints",
    "deadline_scope",
    "CircuitOpenError",
    "MeshDeadlineExceeded",
    "MeshError",
    "NoEndpointsError",
    "ClientConfig",
    "GrpcService",
    "InfraSettings",
    "Instance",
    "MeshClient",
    "Registration",
    "ServiceHost",
    "ServicePolicy",
    "ServiceSettings",
    "ServiceSpec",
    "Watcher",
    "abort_with",
    "client_interceptors",
    "current_principal",
    "server_interceptors",
    "status_error",
}


def test_mesh_exports_exactly_the_public_api():
    assert set(mesh.__all__) == EXPECTED


def test_every_export_resolves():
    for name in mesh.__all__:
        assert getattr(mesh, name) is not None
