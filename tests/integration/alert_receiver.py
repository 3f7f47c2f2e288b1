"""Real receivers on loopback: an HTTP server playing a webhook receiver and an SMTP server (aiosmtpd);
both record what they get and answer as told."""

from __future__ import annotations

import asyncio
import email
import email.message
import json
import ssl
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    arrival_time: float = field(default_factory=time.perf_counter)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """Answers each request with the next status in ``script`` (then ``default_status``)."""

    port: int = 0
    default_status: int = 200
    delay_s: float = 0.0
    script: deque[int] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.script = deque(self.script)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.received.append(Received(path, headers, body))
                self.arrived.set()
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                status = self.script.popleft() if self.script else self.default_status
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def webhook_receiver(**options: Any) -> AsyncIterator[WebhookReceiver]:
    """A receiver listening on a free loopback port until the block ends."""
    receiver = WebhookReceiver(**options)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Mail:
    """One message the SMTP receiver accepted."""

    sender: str
    recipients: list[str]
    message: email.message.Message
    login: str | None

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        payload = self.message.get_payload(decode=True)
        return payload.decode() if isinstance(payload, bytes) else str(payload)


@dataclass
class SmtpReceiver:
    """An SMTP server (aiosmtpd) on loopback; answers DATA with the next code in ``script`` (then 250)."""

    port: int = 0
    script: deque[str] = field(default_factory=deque)
    users: dict[str, str] = field(default_factory=dict)
    mails: list[Mail] = field(default_factory=list)
    attempts: int = 0

    def __post_init__(self) -> None:
        self.script = deque(self.script)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.attempts += 1
        if self.script:
            return self.script.popleft()
        assert isinstance(envelope.content, bytes)
        login = session.auth_data.decode() if isinstance(session.auth_data, bytes) else None
        parsed = email.message_from_bytes(envelope.content)
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), parsed, login))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            if user in self.users and self.users[user] == password:
                return AuthResult(success=True, auth_data=data.login)
        return AuthResult(success=False, handled=False)


def self_signed_context() -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    directory = Path(tempfile.mkdtemp(prefix="itsmesh-smtp-"))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


@asynccontextmanager
async def smtp_receiver(
    *, starttls: bool = False, port: int = 0, **options: Any
) -> AsyncIterator[SmtpReceiver]:
    """An SMTP server on a loopback port (a free one unless ``port``) until the block ends.

    With ``users`` it offers AUTH (after STARTTLS when ``starttls``); with ``starttls`` it offers STARTTLS
    with a self-signed certificate.
    """
    receiver = SmtpReceiver(**options)
    tls = self_signed_context() if starttls else None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            receiver,
            hostname="127.0.0.1",
            tls_context=tls,
            require_starttls=starttls,
            auth_required=bool(receiver.users),
            auth_require_tls=starttls,
            authenticator=receiver.authenticate,
        ),
        "127.0.0.1",
        port,
    )
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()
