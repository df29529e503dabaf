"""Notifications end to end: real executions, a real aiosmtpd server, a real aiohttp receiver.

Executions run in the real engine (`open_engine`, with the system clock so durations are
real); `Notifier.submit` listens to the runner's endings (`RunEvents`), as in the daemon. The
servers listen on 127.0.0.1. Retries use a base delay of 0.05 s. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from engine_fixtures import Engine, open_engine, until
from structlog.testing import capture_logs

from taskd.clock import SystemClock
from taskd.config import parse_config
from taskd.errors import FieldError, ValidationError
from taskd.model import ExecutionStatus, Outcome
from taskd.notify import Notifier
from taskd.schedule import format_utc
from taskd.settings import Settings, SmtpSecurity

WAIT_SEC = 5.0  # a hang detector: every delivery here ends well within it
FAST_RETRIES = "max_attempts = 5\nretry_base_delay_sec = 0.05\nshutdown_timeout_sec = 1\n"
# 30 lines of output, then a failure: the mail quotes the last 20 log lines of the run.
FAILING_COMMAND = 'for i in $(seq 1 30); do echo "line $i"; done; echo "disk full"; exit 3'


# ---------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Received:
    """One message the SMTP server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str | None


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps every message (it runs in the server's thread)."""

    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Parse and keep the message."""
        assert isinstance(envelope.content, bytes)
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        login = session.auth_data.login.decode() if session.authenticated else None
        received = Received(
            mail_from=str(envelope.mail_from),
            rcpt_tos=list(envelope.rcpt_tos),
            message=parsed,
            tls=server.transport is not None
            and server.transport.get_extra_info("ssl_object") is not None,
            login=login,
        )
        with self.lock:
            self.messages.append(received)
        return "250 OK"

    def to(self, address: str) -> list[Received]:
        """The messages whose envelope names `address`."""
        with self.lock:
            return [m for m in self.messages if address in m.rcpt_tos]


@contextmanager
def smtp_server(port: int, inbox: Inbox, **kwargs: Any) -> Iterator[Controller]:
    """A real aiosmtpd server on 127.0.0.1:`port` (in its own thread) for the block."""
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@dataclass
class Hook:
    """A webhook receiver: keeps each request and answers with the next status in line."""

    statuses: list[int] = field(default_factory=list)  # then 200 forever
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        """Record the request; answer the next status."""
        body = await request.read()
        self.requests.append((request.path, dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "no")

    def bodies(self, path: str) -> list[dict[str, Any]]:
        """The JSON bodies posted to `path`."""
        return [json.loads(body) for p, _, body in self.requests if p == path]


@asynccontextmanager
async def webhook_server(hook: Hook) -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1 (free port); yields its base URL."""
    app = web.Application()
    app.router.add_post("/{name}", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 and its key; return (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        _cert_with_cryptography(cert, key)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl is available")
        command = (
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
            " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
        )
        subprocess.run(
            [*command.split(), "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return cert, key


def _cert_with_cryptography(cert_path: Path, key_path: Path) -> None:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


# ---------------------------------------------------------------------------------------
# The engine and the notifier


def settings(tmp_path: Path, text: str) -> Settings:
    """Validate config `text` as if it were `tmp_path/taskd.toml`."""
    return parse_config(text, source="taskd.toml", base_dir=tmp_path)


def smtp_section(port: int, extra: str = "") -> str:
    """An `[smtp]` section for the local server, plain text unless `extra` says otherwise."""
    security = "" if "security" in extra else 'security = "none"\n'
    return (
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nfrom = "taskd@example.org"\n'
        f"timeout_sec = 2\n{security}{extra}"
    )


@asynccontextmanager
async def engine_with(
    tmp_path: Path, config: Settings
) -> AsyncIterator[tuple[Engine, Notifier, list[Outcome]]]:
    """The real engine with a started notifier whose `submit` follows each outcome.

    Yields the engine, the notifier and the outcomes handed to it so far.
    """
    outcomes: list[Outcome] = []
    async with open_engine(tmp_path / "taskd.db", clock=SystemClock()) as engine:
        notifier = Notifier.from_settings(config, store=engine.store, clock=engine.clock)
        engine.events.on_ended(outcomes.append)
        engine.events.on_ended(notifier.submit)
        async with notifier:
            yield engine, notifier, outcomes


async def run_task(engine: Engine, outcomes: list[Outcome], name: str, **fields: Any) -> int:
    """Create a task, run it once now; return once its outcome has reached `outcomes`."""
    task = await engine.create(name, **fields)
    return await run_again(engine, outcomes, task.id)


async def run_again(engine: Engine, outcomes: list[Outcome], task_id: int) -> int:
    """Run a task once now; return once its outcome has reached `outcomes`."""
    execution_id = await engine.core.run(task_id)
    await engine.tick()  # the scheduler's loop is not running: one step starts the run
    await until(
        lambda: any(o.job.execution_id == execution_id for o in outcomes), timeout_sec=WAIT_SEC
    )
    return execution_id


def recipients(*emails: str, problems_only: tuple[str, ...] = ()) -> dict[str, Any]:
    """The `email` field of a task body."""
    return {
        "recipients": [
            {"email": address, "problems_only": address in problems_only} for address in emails
        ]
    }


async def drained(notifier: Notifier) -> None:
    """Wait until the notifier has nothing queued or in flight."""
    async with asyncio.timeout(WAIT_SEC):
        await notifier.drain()


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The captured log events called `name`."""
    return [entry for entry in logs if entry["event"] == name]


def body_fields(message: EmailMessage) -> tuple[dict[str, str], list[str]]:
    """Split a notification mail's text into its `Name: value` rows and its log lines."""
    text = message.get_content().replace("\r\n", "\n")
    head, _, tail = text.partition("\n\nLast ")
    rows = dict(line.split(":", 1) for line in head.splitlines())
    log_lines = tail.splitlines()[1:]
    return {name: value.strip() for name, value in rows.items()}, log_lines


# ---------------------------------------------------------------------------------------
# Mail


async def test_failed_execution_mails_each_recipient(tmp_path: Path) -> None:
    """A failed run mails each recipient once: subject, status, message, times, last 20 lines."""
    port, inbox = free_port(), Inbox()
    config = settings(tmp_path, smtp_section(port) + "[notify]\n" + FAST_RETRIES)
    with smtp_server(port, inbox):
        async with engine_with(tmp_path, config) as (engine, notifier, outcomes):
            execution_id = await run_task(
                engine,
                outcomes,
                "nightly-backup",
                module="shell",
                params={"command": FAILING_COMMAND},
                email=recipients("ops@example.org", "dev@example.org"),
            )
            await drained(notifier)
            execution = await engine.store.get_execution(execution_id)
            entries = await engine.store.read_log(
                execution.task_id, execution_id=execution_id, limit=1000
            )
    # The shell module's own lines may come between the output lines: the mail must quote
    # exactly the store's last 20 entries of the run, whatever they are.
    tail = [entry.msg for entry in entries[-20:]]
    assert len(entries) > 30
    assert tail[-1] == "error: exit code 3"
    assert {"disk full", "line 30"} <= set(tail)
    assert "line 1" not in tail
    expected_lines = [
        f"{format_utc(entry.timestamp)} {entry.level:<7} {entry.msg}" for entry in entries[-20:]
    ]
    assert len(inbox.messages) == 2
    assert [m.rcpt_tos for m in inbox.messages] in (
        [["ops@example.org"], ["dev@example.org"]],
        [["dev@example.org"], ["ops@example.org"]],
    )
    for address in ("ops@example.org", "dev@example.org"):
        (received,) = inbox.to(address)
        message = received.message
        assert received.mail_from == "taskd@example.org"
        assert message["Subject"] == "[taskd] nightly-backup: error"
        assert (message["From"], message["To"]) == ("taskd@example.org", address)
        assert message["Auto-Submitted"] == "auto-generated"
        rows, log_lines = body_fields(message)
        assert execution.started_at is not None
        assert execution.finished_at is not None
        assert rows == {
            "Task": f"nightly-backup (id {execution.task_id})",
            "Execution": str(execution_id),
            "Status": "error",
            "Message": "exit code 3",
            "Trigger": "manual",
            "Scheduled for": rows["Scheduled for"],
            "Started": execution.started_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "Finished": execution.finished_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "Duration": rows["Duration"],
            "Host": "test-host",
        }
        assert re.fullmatch(r"\d+ ms|\d+\.\d s", rows["Duration"])
        assert log_lines == expected_lines
    assert (notifier.sent, notifier.failed) == (2, 0)


async def test_problems_only_recipients_get_error_but_not_done(tmp_path: Path) -> None:
    """`problems_only` recipients get mail about a failed run, not about a successful one."""
    port, inbox = free_port(), Inbox()
    config = settings(tmp_path, smtp_section(port) + "[notify]\n" + FAST_RETRIES)
    email = recipients(
        "all@example.org", "oncall@example.org", problems_only=("oncall@example.org",)
    )
    with smtp_server(port, inbox):
        async with engine_with(tmp_path, config) as (engine, notifier, outcomes):
            await run_task(engine, outcomes, "fine", params={"auto": True}, email=email)
            await drained(notifier)
            assert [(m.rcpt_tos, m.message["Subject"]) for m in inbox.messages] == [
                (["all@example.org"], "[taskd] fine: done")
            ]
            await run_task(
                engine, outcomes, "broken", params={"auto": True, "fail": "boom"}, email=email
            )
            await drained(notifier)
    subjects = sorted((m.rcpt_tos[0], m.message["Subject"]) for m in inbox.messages[1:])
    assert subjects == [
        ("all@example.org", "[taskd] broken: error"),
        ("oncall@example.org", "[taskd] broken: error"),
    ]
    rows, _ = body_fields(inbox.to("oncall@example.org")[0].message)
    assert (rows["Status"], rows["Message"]) == ("error", "boom")


async def test_log_line_count_is_configurable(tmp_path: Path) -> None:
    """`notify.log_lines` sets how many of the run's last log lines the mail quotes."""
    port, inbox = free_port(), Inbox()
    config = settings(tmp_path, smtp_section(port) + "[notify]\nlog_lines = 3\n" + FAST_RETRIES)
    with smtp_server(port, inbox):
        async with engine_with(tmp_path, config) as (engine, notifier, outcomes):
            execution_id = await run_task(
                engine,
                outcomes,
                "short",
                module="shell",
                params={"command": FAILING_COMMAND},
                email=recipients("ops@example.org"),
            )
            await drained(notifier)
            entries = await engine.store.read_log(1, execution_id=execution_id, limit=1000)
    (received,) = inbox.messages
    _, log_lines = body_fields(received.message)
    assert len(entries) > 30
    assert [line.split(maxsplit=2)[2] for line in log_lines] == [e.msg for e in entries[-3:]]
    assert "\nLast 3 log lines (UTC):\n" in received.message.get_content().replace("\r\n", "\n")


# aiosmtpd warns about AUTH without TLS; this server is on loopback, on purpose.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_auth_uses_the_password_from_its_file(tmp_path: Path) -> None:
    """AUTH sends the username and the password read from password_file; a wrong one is final."""
    port, inbox = free_port(), Inbox()
    seen: list[tuple[str, bytes, bytes]] = []

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        seen.append((mechanism, data.login, data.password))
        ok = (data.login, data.password) == (b"taskd", b"s3cret pass")
        return AuthResult(success=ok, handled=False, auth_data=data)

    (tmp_path / "smtp-password").write_text("s3cret pass\n")
    config = settings(
        tmp_path,
        smtp_section(port, 'username = "taskd"\npassword_file = "smtp-password"\n')
        + "[notify]\n"
        + FAST_RETRIES,
    )
    assert config.smtp is not None
    assert config.smtp.password_file == tmp_path / "smtp-password"
    with (
        smtp_server(
            port, inbox, authenticator=authenticator, auth_required=True, auth_require_tls=False
        ),
        capture_logs() as logs,
    ):
        async with engine_with(tmp_path, config) as (engine, notifier, outcomes):
            email = recipients("ops@example.org")
            await run_task(
                engine, outcomes, "authed", params={"auto": True, "fail": "x"}, email=email
            )
            await drained(notifier)
            assert [m.login for m in inbox.messages] == ["taskd"]
            assert seen
            assert all(entry[1:] == (b"taskd", b"s3cret pass") for entry in seen)

            # A changed password file is read at the next delivery; the refusal is final.
            (tmp_path / "smtp-password").write_text("wrong\n")
            await run_task(
                engine, outcomes, "refused", params={"auto": True, "fail": "x"}, email=email
            )
            await drained(notifier)
    assert len(inbox.messages) == 1
    (failure,) = events(logs, "notification failed")
    assert failure["attempts"] == 1
    assert failure["error"].startswith("535")
    assert failure["task"] == "refused"
    assert "wrong" not in repr(logs)
    assert "s3cret" not in repr(logs)


@pytest.mark.parametrize("security", [SmtpSecurity.STARTTLS, SmtpSecurity.TLS])
async def test_tls_with_a_self_signed_certificate(tmp_path: Path, security: SmtpSecurity) -> None:
    """STARTTLS and implicit TLS verify the server against ca_file and carry the mail."""
    cert, key = self_signed_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    port, inbox = free_port(), Inbox()
    if security is SmtpSecurity.STARTTLS:
        server_options: dict[str, Any] = {"tls_context": server_tls, "require_starttls": True}
    else:
        server_options = {"ssl_context": server_tls}
    extra = f'security = "{security}"\nca_file = "{cert.name}"\n'
    config = settings(tmp_path, smtp_section(port, extra) + "[notify]\n" + FAST_RETRIES)
    with smtp_server(port, inbox, **server_options):
        async with engine_with(tmp_path, config) as (engine, notifier, outcomes):
            await run_task(
                engine,
                outcomes,
                "secure",
                params={"auto": True},
                email=recipients("ops@example.org"),
            )
            await drained(notifier)
    (received,) = inbox.messages
    assert received.message["Subject"] == "[taskd] secure: done"
    assert received.tls


async def test_tls_refuses_a_certificate_it_cannot_verify(tmp_path: Path) -> None:
    """Without ca_file, a self-signed certificate fails verification: logged, no mail."""
    cert, key = self_signed_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    port, inbox = free_port(), Inbox()
    text = smtp_section(port, 'security = "tls"\n') + "[notify]\nmax_attempts = 2\n"
    config = settings(tmp_path, text + "retry_base_delay_sec = 0.05\n")
    with smtp_server(port, inbox, ssl_context=server_tls), capture_logs() as logs:
        async with engine_with(tmp_path, config) as (engine, notifier, outcomes):
            await run_task(
                engine, outcomes, "x", params={"auto": True}, email=recipients("a@example.org")
            )
            await drained(notifier)
    assert inbox.messages == []
    (failure,) = events(logs, "notification failed")
    assert "CERTIFICATE_VERIFY_FAILED" in failure["error"]


async def test_server_down_at_first_gets_the_mail_after_retries(tmp_path: Path) -> None:
    """A server that comes up only after the first attempts failed still gets the mail."""
    port, inbox = free_port(), Inbox()
    config = settings(
        tmp_path, smtp_section(port) + "[notify]\nmax_attempts = 8\nretry_base_delay_sec = 0.05\n"
    )
    with capture_logs() as logs:
        async with engine_with(tmp_path, config) as (engine, notifier, outcomes):
            await run_task(
                engine, outcomes, "late", params={"auto": True}, email=recipients("a@example.org")
            )
            # Up only once two attempts have failed.
            await until(
                lambda: len(events(logs, "notification attempt failed")) >= 2, timeout_sec=WAIT_SEC
            )
            assert inbox.messages == []
            with smtp_server(port, inbox):
                await drained(notifier)
    (received,) = inbox.messages
    assert received.message["Subject"] == "[taskd] late: done"
    retries = events(logs, "notification attempt failed")
    (sent,) = events(logs, "notification sent")
    assert sent["attempts"] == len(retries) + 1 >= 2
    assert [entry["retry_in_sec"] for entry in retries][:2] == [0.05, 0.1]
    assert events(logs, "notification failed") == []


@pytest.mark.slow  # five attempts, with real retry delays
async def test_server_never_up_logs_the_failure_and_raises_nothing(tmp_path: Path) -> None:
    """With no server ever, each attempt is logged, then the failure; nothing is raised."""
    port = free_port()
    config = settings(tmp_path, smtp_section(port) + "[notify]\n" + FAST_RETRIES)
    with capture_logs() as logs:
        async with engine_with(tmp_path, config) as (engine, notifier, outcomes):
            await run_task(
                engine, outcomes, "lost", params={"auto": True}, email=recipients("a@example.org")
            )
            await drained(notifier)
            # The engine carries on: the next run is recorded as usual.
            await run_task(engine, outcomes, "next", params={"auto": True})
    retries = events(logs, "notification attempt failed")
    assert [entry["attempt"] for entry in retries] == [1, 2, 3, 4]
    (failure,) = events(logs, "notification failed")
    assert failure["log_level"] == "error"
    assert (failure["attempts"], failure["channel"], failure["target"]) == (
        5,
        "email",
        "a@example.org",
    )
    assert "SMTPConnectError" in failure["error"]
    assert (notifier.sent, notifier.failed) == (0, 1)


@pytest.mark.slow
async def test_notify_returns_before_the_first_attempt_ends(tmp_path: Path) -> None:
    """notify() only queues: it returns while the server has not even answered the connect."""
    connected = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, never greet: the client waits for its timeout
        connected.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    text = smtp_section(port).replace("timeout_sec = 2", "timeout_sec = 0.3")
    config = settings(tmp_path, text + "[notify]\nmax_attempts = 1\n")
    outcomes: list[Outcome] = []
    try:
        with capture_logs() as logs:
            async with open_engine(tmp_path / "taskd.db", clock=SystemClock()) as engine:
                engine.events.on_ended(outcomes.append)
                await run_task(
                    engine, outcomes, "slow", params={"auto": True}, email=recipients("a@x.org")
                )
                notifier = Notifier.from_settings(config, store=engine.store, clock=engine.clock)
                async with notifier:
                    started = time.monotonic()
                    await notifier.notify(outcomes[0])
                    elapsed = time.monotonic() - started
                    assert elapsed < 0.05
                    assert not connected.is_set()
                    async with asyncio.timeout(WAIT_SEC):
                        await connected.wait()
                    assert events(logs, "notification failed") == []  # the attempt is pending
                    await drained(notifier)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    (failure,) = events(logs, "notification failed")
    assert "SMTPTimeoutError" in failure["error"] or "Timeout" in failure["error"]


async def test_skipped_executions_never_notify(tmp_path: Path) -> None:
    """An outcome with status `skipped` is not queued; mail and webhooks stay silent."""
    port, inbox, hook = free_port(), Inbox(), Hook()
    async with webhook_server(hook) as base:
        text = smtp_section(port) + f'[notify]\nwebhooks = [{{ url = "{base}/all" }}]\n'
        config = settings(tmp_path, text)
        with smtp_server(port, inbox):
            async with engine_with(tmp_path, config) as (engine, notifier, outcomes):
                # The gate returns without a status message: a `done` run, then made skipped.
                await run_task(
                    engine, outcomes, "t", params={"auto": True}, email=recipients("a@x.org")
                )
                await drained(notifier)
                assert len(inbox.messages) == len(hook.requests) == 1
                skipped = dataclasses.replace(outcomes[0], status=ExecutionStatus.SKIPPED)
                assert notifier.submit(skipped) is False
                await drained(notifier)
    assert len(inbox.messages) == len(hook.requests) == 1


async def test_mail_without_smtp_section_is_logged_once(tmp_path: Path) -> None:
    """Recipients without `[smtp]`: nothing is queued, and a warning says so once per task."""
    config = settings(tmp_path, "")
    with capture_logs() as logs:
        async with engine_with(tmp_path, config) as (engine, notifier, outcomes):
            email = recipients("a@example.org")
            task = await engine.create("unmailed", params={"auto": True}, email=email)
            for _ in range(2):
                await run_again(engine, outcomes, task.id)
            await drained(notifier)
    warnings = [e for e in logs if "[smtp] is not configured" in e["event"]]
    assert [w["task"] for w in warnings] == ["unmailed"]
    assert notifier.sent == 0


@pytest.mark.slow
async def test_close_abandons_what_cannot_go_out_within_the_deadline(tmp_path: Path) -> None:
    """At shutdown, deliveries still retrying are given the deadline, then abandoned (logged)."""
    port = free_port()
    text = smtp_section(port) + "[notify]\nmax_attempts = 50\nretry_base_delay_sec = 0.05\n"
    config = settings(tmp_path, text + "shutdown_timeout_sec = 0.3\n")
    with capture_logs() as logs:
        async with engine_with(tmp_path, config) as (engine, notifier, outcomes):
            await run_task(
                engine, outcomes, "t", params={"auto": True}, email=recipients("a@x.org")
            )
            await until(lambda: events(logs, "notification attempt failed"), timeout_sec=WAIT_SEC)
            started = time.monotonic()
            await notifier.close()
            assert time.monotonic() - started < 1.5
            assert notifier.submit(outcomes[0]) is False
    (abandoned,) = events(logs, "notifications abandoned at shutdown")
    assert abandoned["in_flight"] == 1
    assert events(logs, "notification abandoned")[0]["target"] == "a@x.org"


# ---------------------------------------------------------------------------------------
# Webhooks


async def test_webhook_posts_signed_json(tmp_path: Path) -> None:
    """A finished run is POSTed as JSON; X-Taskd-Signature verifies with the shared secret."""
    hook = Hook()
    (tmp_path / "hook-secret").write_text("shared-secret\n")
    async with webhook_server(hook) as base:
        text = (
            f'[notify]\nretry_base_delay_sec = 0.05\n[[notify.webhooks]]\nurl = "{base}/signed"\n'
            'secret_file = "hook-secret"\n'
        )
        async with engine_with(tmp_path, settings(tmp_path, text)) as (engine, notifier, outcomes):
            execution_id = await run_task(
                engine, outcomes, "hooked", params={"auto": True, "fail": "bad"}
            )
            await drained(notifier)
            execution = await engine.store.get_execution(execution_id)
    ((path, headers, body),) = hook.requests
    assert path == "/signed"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Taskd-Event"] == "execution.finished"
    expected = hmac.new(b"shared-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-Taskd-Signature"] == f"sha256={expected}"
    assert execution.started_at is not None
    assert execution.finished_at is not None
    assert json.loads(body) == {
        "event": "execution.finished",
        "task": {"id": execution.task_id, "name": "hooked"},
        "execution": {
            "id": execution_id,
            "status": "error",
            "status_msg": "bad",
            "trigger": "manual",
            "started_at": execution.started_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "finished_at": execution.finished_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "duration_sec": (execution.finished_at - execution.started_at).total_seconds(),
            "attempt": 0,
        },
        "host": "test-host",
    }


async def test_webhook_events_filter(tmp_path: Path) -> None:
    """Each webhook gets only the endings named in its `events`; the default is all."""
    hook = Hook()
    async with webhook_server(hook) as base:
        text = (
            "[notify]\nwebhooks = [\n"
            f'  {{ url = "{base}/errors", events = ["error"] }},\n'
            f'  {{ url = "{base}/done", events = ["done"] }},\n'
            f'  {{ url = "{base}/all" }},\n'
            "]\n"
        )
        async with engine_with(tmp_path, settings(tmp_path, text)) as (engine, notifier, outcomes):
            await run_task(engine, outcomes, "good", params={"auto": True})
            await run_task(engine, outcomes, "bad", params={"auto": True, "fail": "no"})
            await drained(notifier)
    statuses = {
        path: [(b["task"]["name"], b["execution"]["status"]) for b in hook.bodies(path)]
        for path in ("/errors", "/done", "/all")
    }
    assert statuses["/errors"] == [("bad", "error")]
    assert statuses["/done"] == [("good", "done")]
    assert sorted(statuses["/all"]) == [("bad", "error"), ("good", "done")]


async def test_webhook_server_error_is_retried(tmp_path: Path) -> None:
    """500 and 503 answers are retried with the same body and delivery id until a 200."""
    hook = Hook(statuses=[500, 503])
    async with webhook_server(hook) as base:
        text = f'[notify]\nretry_base_delay_sec = 0.05\nwebhooks = [{{ url = "{base}/flaky" }}]\n'
        with capture_logs() as logs:
            async with engine_with(tmp_path, settings(tmp_path, text)) as (
                engine,
                notifier,
                outcomes,
            ):
                await run_task(engine, outcomes, "t", params={"auto": True, "fail": "x"})
                await drained(notifier)
    assert len(hook.requests) == 3
    assert len({body for _, _, body in hook.requests}) == 1
    assert len({headers["X-Taskd-Delivery"] for _, headers, _ in hook.requests}) == 1
    retries = events(logs, "notification attempt failed")
    assert [(r["attempt"], r["error"]) for r in retries] == [
        (1, "_RetryableHttpError: HTTP 500 Internal Server Error"),
        (2, "_RetryableHttpError: HTTP 503 Service Unavailable"),
    ]
    (sent,) = events(logs, "notification sent")
    assert (sent["attempts"], sent["target"]) == (3, f"webhooks[0] {base}")
    assert notifier.sent == 1


async def test_webhook_client_error_is_final(tmp_path: Path) -> None:
    """A 404 answer is not retried: one request, one logged failure."""
    hook = Hook(statuses=[404])
    async with webhook_server(hook) as base:
        text = f'[notify]\nretry_base_delay_sec = 0.05\nwebhooks = [{{ url = "{base}/gone" }}]\n'
        with capture_logs() as logs:
            async with engine_with(tmp_path, settings(tmp_path, text)) as (
                engine,
                notifier,
                outcomes,
            ):
                await run_task(engine, outcomes, "t", params={"auto": True})
                await drained(notifier)
    assert len(hook.requests) == 1
    (failure,) = events(logs, "notification failed")
    assert (failure["attempts"], failure["error"]) == (1, "HTTP 404 Not Found")


# ---------------------------------------------------------------------------------------
# Config


def test_smtp_and_notify_sections_with_their_defaults(tmp_path: Path) -> None:
    """Both sections load with their defaults; paths are relative to the config directory."""
    (tmp_path / "pw").write_text("x")
    (tmp_path / "secret").write_text("y")
    config = settings(
        tmp_path,
        '[smtp]\nhost = "mail.example.org"\nfrom = "taskd@example.org"\n'
        'username = "taskd"\npassword_file = "pw"\n'
        '[[notify.webhooks]]\nurl = "https://hooks.example.org/t?token=1"\n'
        'secret_file = "secret"\n',
    )
    smtp = config.smtp
    assert smtp is not None
    assert (smtp.host, smtp.port, smtp.security) == ("mail.example.org", 25, SmtpSecurity.STARTTLS)
    assert (smtp.username, smtp.password_file) == ("taskd", tmp_path / "pw")
    assert (smtp.from_address, smtp.timeout_sec, smtp.ca_file) == ("taskd@example.org", 30.0, None)
    (webhook,) = config.notify.webhooks
    assert webhook.events == {"done", "error", "canceled"}
    assert webhook.secret_file == tmp_path / "secret"
    assert (config.notify.log_lines, config.notify.max_attempts) == (20, 5)
    tls = settings(tmp_path, '[smtp]\nhost = "::1"\nfrom = "a@b.org"\nsecurity = "tls"\n').smtp
    assert tls is not None
    assert tls.port == 465
    assert settings(tmp_path, "").smtp is None


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        ("port = 70000\n", "smtp.port", "must be an integer <= 65535, got 70000"),
        ('port = "25"\n', "smtp.port", "must be an integer, got the string '25'"),
        (
            'security = "ssl"\n',
            "smtp.security",
            "must be one of 'none', 'starttls', 'tls', got the string 'ssl'",
        ),
        (
            'username = "u"\npassword_file = "missing"\n',
            "smtp.password_file",
            "{dir}/missing does not exist; it must name a file",
        ),
        (
            'username = "u"\npassword = "hunter2"\npassword_file = "pw"\n',
            "smtp.password",
            "a secret is never written in the config file: put it in a file only taskd "
            "can read and name that file in password_file",
        ),
        ('username = "u"\n', "smtp.password_file", "is required when username is set"),
        ('password_file = "pw"\n', "smtp.username", "is required when password_file is set"),
        (
            'security = "none"\nusername = "u"\npassword_file = "pw"\n',
            "smtp.security",
            "'none' would send the password in clear text to a host that is not loopback; "
            "use 'starttls' or 'tls'",
        ),
        ("timeout_sec = 0\n", "smtp.timeout_sec", "must be a number > 0, got 0"),
        ("helo = 'x'\n", "smtp.helo", "unknown field; expected one of: {smtp_keys}"),
    ],
)
def test_smtp_section_errors_at_their_path(
    tmp_path: Path, text: str, path: str, reason: str
) -> None:
    """Each invalid `[smtp]` value is refused at its exact path, alone."""
    (tmp_path / "pw").write_text("x")
    smtp_keys = (
        "ca_file, from, host, password, password_file, port, security, timeout_sec, username"
    )
    full = f'[smtp]\nhost = "mail.example.org"\nfrom = "t@example.org"\n{text}'
    with pytest.raises(ValidationError) as caught:
        settings(tmp_path, full)
    assert caught.value.errors == [
        FieldError(path, reason.format(dir=tmp_path, smtp_keys=smtp_keys))
    ]


@pytest.mark.parametrize(
    ("webhook", "path", "reason"),
    [
        (
            'url = "ftp://hooks.example.org/x"',
            "notify.webhooks[0].url",
            "must be an http or https URL such as 'https://hooks.example.org/taskd', "
            "got 'ftp://hooks.example.org/x'",
        ),
        (
            'url = "https:///no-host"',
            "notify.webhooks[0].url",
            "must be an http or https URL such as 'https://hooks.example.org/taskd', "
            "got 'https:///no-host'",
        ),
        ("timeout_sec = 5", "notify.webhooks[0].url", "is required"),
        (
            'url = "https://h.example.org"\nevents = ["failed"]',
            "notify.webhooks[0].events[0]",
            "must be one of 'done', 'error', 'canceled', got the string 'failed'",
        ),
        (
            'url = "https://h.example.org"\nsecret_file = "nope"',
            "notify.webhooks[0].secret_file",
            "{dir}/nope does not exist; it must name a file",
        ),
        (
            'url = "https://h.example.org"\nsecret = "s"',
            "notify.webhooks[0].secret",
            "a secret is never written in the config file: put it in a file only taskd "
            "can read and name that file in secret_file",
        ),
    ],
)
def test_webhook_errors_at_their_path(tmp_path: Path, webhook: str, path: str, reason: str) -> None:
    """Each invalid webhook value is refused at its exact path, alone."""
    with pytest.raises(ValidationError) as caught:
        settings(tmp_path, f"[[notify.webhooks]]\n{webhook}\n")
    assert caught.value.errors == [FieldError(path, reason.format(dir=tmp_path))]


def test_notify_section_errors_are_all_reported(tmp_path: Path) -> None:
    """Several problems in `[notify]` and `[smtp]` come back together, each at its path."""
    text = (
        '[smtp]\nport = 0\nfrom = "nobody"\n'
        "[notify]\nlog_lines = -1\nmax_attempts = 0\nretry_base_delay_sec = 0\n"
        'webhooks = [{ url = "https://ok.example.org" }, { url = "http://h:99999/" }]\n'
    )
    with pytest.raises(ValidationError) as caught:
        settings(tmp_path, text)
    assert [error.path for error in caught.value.errors] == [
        "smtp.host",
        "smtp.port",
        "smtp.from",
        "notify.webhooks[1].url",
        "notify.log_lines",
        "notify.max_attempts",
        "notify.retry_base_delay_sec",
    ]
