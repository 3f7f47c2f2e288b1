"""TLS and mutual TLS between services: a config switch (``ITSMESH_TLS_*``), and a development CA.

With ``ITSMESH_TLS_ENABLED=true`` every gRPC server listens with TLS and asks for a client certificate
signed by the CA (mTLS, unless ``ITSMESH_TLS_REQUIRE_CLIENT_CERT=false``), and every mesh client presents
its certificate and verifies the server's against the same CA. ``itsmesh certs`` writes a local CA and a
certificate per service for development; production mounts certificates from its own CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TlsSettings(BaseSettings):
    """Whether and how gRPC between services is encrypted and mutually authenticated."""

    model_config = SettingsConfigDict(env_prefix="ITSMESH_TLS_", extra="ignore", frozen=True)

    enabled: bool = Field(False, description="Serve and call gRPC over TLS (plaintext when false).")
    ca_file: Path | None = Field(None, description="PEM of the CA that signs every service certificate.")
    cert_file: Path | None = Field(None, description="PEM certificate of this process (server and client).")
    key_file: Path | None = Field(None, description="PEM private key of cert_file (keep it mode 0600).")
    require_client_cert: bool = Field(
        True, description="Servers refuse callers without a certificate from the CA (mutual TLS)."
    )
    server_name: str | None = Field(
        None, description="Name to verify in server certificates instead of the dialled host (e.g. itsmesh)."
    )

    def _read(self) -> tuple[bytes, bytes, bytes]:
        files = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        missing = [f"ITSMESH_TLS_{name.upper()}" for name, path in files.items() if path is None]
        if missing:
            raise ValueError(f"ITSMESH_TLS_ENABLED=true needs {', '.join(missing)}")
        ca, cert, key = (path.read_bytes() for path in files.values() if path is not None)
        return ca, cert, key

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``add_secure_port``."""
        ca, cert, key = self._read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=self.require_client_cert
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for ``secure_channel``: trust the CA, present this process's certificate."""
        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def channel_options(self) -> list[tuple[str, str]]:
        """Channel options: the name to verify, when it is not the dialled host."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def open_channel(
    address: str,
    tls: TlsSettings | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``address``: secure when ``tls`` is enabled, plaintext otherwise."""
    opts: list[tuple[str, Any]] = list(options or [])
    if tls is not None and tls.enabled:
        opts.extend(tls.channel_options())
        return grpc.aio.secure_channel(
            address, tls.channel_credentials(), options=opts, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)


# --- development CA ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """Paths of one certificate and its key."""

    cert_file: Path
    key_file: Path


_LIFETIME = dt.timedelta(days=825)  # the longest validity clients accept for leaf certificates


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "itsmesh development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_ca(out_dir: Path, now: dt.datetime | None = None) -> Issued:
    """A self-signed CA (P-256) in ``out_dir/ca.pem`` and ``ca.key`` (0600)."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("itsmesh development CA"))
        .issuer_name(_name("itsmesh development CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    issued = Issued(out_dir / "ca.pem", out_dir / "ca.key")
    _write(issued.cert_file, cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(issued.key_file, _key_pem(key), private=True)
    return issued


def issue_certificate(
    ca: Issued, out_dir: Path, name: str, hosts: list[str], now: dt.datetime | None = None
) -> Issued:
    """A certificate for ``name``, as server and client, for DNS names/IPs ``hosts``, signed by ``ca``."""
    now = now or dt.datetime.now(dt.UTC)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key_file.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key_file} is not an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for host in dict.fromkeys([name, *hosts]):
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    issued = Issued(out_dir / f"{name}.pem", out_dir / f"{name}.key")
    _write(issued.cert_file, cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(issued.key_file, _key_pem(key), private=True)
    return issued
