"""Notifications after an execution ends: e-mail (SMTP) and webhooks (POST JSON).

Wiring, in the daemon::

    notifier = Notifier.from_settings(settings, store=store, clock=clock)
    # After the store, so that it is closed (drained) before the store is.
    await stack.enter_async_context(notifier)  # starts the worker; on exit, drains then stops
    ...
    notifier.submit(outcome)          # sync; from the runner's outcome hook, after the commit
    await notifier.notify(outcome)    # the same, as an awaitable
    notifier.reconfigure(smtp=new.smtp, settings=new.notify)  # on SIGHUP

Contract:

- `submit(outcome, task=None)` never blocks and never raises: it decides who is interested,
  puts the outcome on a bounded queue and returns True, or returns False when nobody is
  (a `skipped` slot, `problems_only` recipients of a `done` run, no webhook for the event),
  when the queue is full or when the notifier is not running (both logged). `task` may give
  a fresher snapshot of the task than `outcome.job.task`, whose `email.recipients` are used.
- A worker takes outcomes off the queue, reads the execution and its last
  `notify.log_lines` log lines from the store, and starts one delivery per mail recipient
  and per interested webhook. Mail to a task's recipients is sent only when `[smtp]` is
  configured (else logged once per task); each recipient gets a message of their own.
- Each delivery is tried up to `notify.max_attempts` times with exponential backoff
  (`retry_base_delay_sec`, doubling, at most `retry_max_delay_sec`), sleeping through the
  injected `Clock`. Connection errors, timeouts, SMTP 4xx and HTTP 408/425/429/5xx answers are
  retried; SMTP 5xx, an SMTP feature the server lacks and other HTTP answers are final.
  Every ending is a structlog event: `notification sent` (info), `notification attempt
  failed` (warning, will retry), `notification failed` (error); nothing is raised.
- `close()` (or leaving the context) stops taking outcomes, waits up to
  `notify.shutdown_timeout_sec` for what is queued and in flight, then abandons the rest
  (logged with its count).

Secrets (the SMTP password, webhook secrets) are read from their files at each delivery, off
the event loop, so a rotated secret needs no reload. With a secret, a webhook POST carries
`X-Taskd-Signature: sha256=<hex HMAC-SHA256 of the exact body>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import socket
import urllib.parse
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol

import structlog

from taskd.clock import Clock
from taskd.model import Execution, ExecutionStatus, LogEntry, Outcome, Task
from taskd.notify.channels import Channels, FinalError, describe
from taskd.notify.report import Report, mail_body, webhook_payload
from taskd.settings import NotifySettings, Settings, SmtpSettings, WebhookSettings

__all__ = ["ExecutionReader", "Notifier"]

log = structlog.get_logger("taskd.notify")

# Endings that notify; a `skipped` slot never ran and never notifies.
_NOTIFYING = frozenset({ExecutionStatus.DONE, ExecutionStatus.ERROR, ExecutionStatus.CANCELED})
# Deliveries started and not yet ended; past this the worker waits, the queue fills up and
# `submit` drops (and logs) instead of piling up retries without bound behind a dead server.
_MAX_DELIVERIES = 100
# Connections open at once (SMTP sessions and HTTP requests together).
_MAX_CONNECTIONS = 8
# Log entries read per query while looking for an execution's last lines.
_LOG_PAGE = 500


class ExecutionReader(Protocol):
    """What the notifier reads from the store (`taskd.store.Store` provides it)."""

    async def get_execution(self, execution_id: int) -> Execution:
        """Return one execution; raise `NotFoundError` if there is none."""
        ...

    async def read_log(
        self,
        task_id: int,
        *,
        offset: int = 0,
        limit: int = 100,
        execution_id: int | None = None,
    ) -> list[LogEntry]:
        """Return a task's log entries from index `offset` on, oldest first."""
        ...


# What `submit` queues: the outcome, the task, and the recipients and webhooks it chose.
_Queued = tuple[Outcome, Task, list[str], list[tuple[int, WebhookSettings]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Delivery:
    """One message to one destination, with what the logs say about it."""

    channel: str  # "email" or "webhook"
    target: str  # the recipient, or the webhook's index and origin (never its path or query)
    report: Report
    send: Callable[[], Awaitable[None]]


class Notifier:
    """Sends mail and webhook notifications for finished executions; see the module docstring.

    Use as an async context manager (or call `start()` and `close()`).
    """

    def __init__(
        self,
        *,
        smtp: SmtpSettings | None,
        settings: NotifySettings,
        store: ExecutionReader,
        clock: Clock,
        hostname: str | None = None,
    ) -> None:
        self._smtp = smtp
        self._settings = settings
        self._store = store
        self._clock = clock
        # Named once: socket.getfqdn() (aiosmtplib's and make_msgid's default) may block on DNS.
        self.hostname = hostname or socket.gethostname()
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(settings.queue_size)
        self._worker: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._delivery_slots = asyncio.Semaphore(_MAX_DELIVERIES)
        self._connections = asyncio.Semaphore(_MAX_CONNECTIONS)
        self._channels = Channels(hostname=self.hostname)
        self._warned_no_smtp: set[int] = set()
        self._accepting = False
        self.sent = 0  # deliveries that succeeded
        self.failed = 0  # deliveries that ended in failure (final error or attempts used up)
        self.dropped = 0  # outcomes refused because the queue was full or the notifier closed

    @classmethod
    def from_settings(cls, settings: Settings, *, store: ExecutionReader, clock: Clock) -> Notifier:
        """Build a notifier from a config snapshot (`[smtp]` and `[notify]`)."""
        return cls(smtp=settings.smtp, settings=settings.notify, store=store, clock=clock)

    def reconfigure(self, *, smtp: SmtpSettings | None, settings: NotifySettings) -> None:
        """Use new settings for outcomes submitted from now on (`queue_size` stays as it was)."""
        self._smtp = smtp
        self._settings = settings
        self._warned_no_smtp.clear()
        self._channels.forget_tls()  # a reload is also how a changed ca_file is taken up

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Notifier:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start the worker; `submit` accepts outcomes from now on."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="taskd-notifier")
        self._accepting = True

    async def close(self, timeout_sec: float | None = None) -> None:
        """Stop accepting; give pending notifications `timeout_sec` (default from the
        settings) to go out, then abandon the rest (logged) and release the HTTP session."""
        self._accepting = False
        if timeout_sec is None:
            timeout_sec = self._settings.shutdown_timeout_sec
        if self._worker is not None:
            try:
                async with asyncio.timeout(timeout_sec):
                    await self.drain()
            except TimeoutError:
                log.warning(
                    "notifications abandoned at shutdown",
                    queued=self._queue.qsize(),
                    in_flight=len(self._deliveries),
                    timeout_sec=timeout_sec,
                )
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        deliveries = list(self._deliveries)
        for delivery in deliveries:
            delivery.cancel()
        await asyncio.gather(*deliveries, return_exceptions=True)
        await self._channels.close()

    async def drain(self) -> None:
        """Return once nothing is queued or being delivered (for tests and shutdown).

        Waits for retries too; the caller bounds the wait.
        """
        while True:
            await self._queue.join()
            if not self._deliveries:
                return
            await asyncio.wait(set(self._deliveries))

    # -- submitting -----------------------------------------------------------------------

    def submit(self, outcome: Outcome, task: Task | None = None) -> bool:
        """Queue notifications for a finished execution; never blocks, never raises.

        Returns whether anything was queued (see the module docstring).
        """
        try:
            return self._submit(outcome, task or outcome.job.task)
        except Exception:  # a notification problem must never reach the runner
            log.exception("could not queue notifications", execution_id=outcome.job.execution_id)
            return False

    async def notify(self, outcome: Outcome, task: Task | None = None) -> None:
        """`submit` as an awaitable, for hooks that await (it returns at once)."""
        self.submit(outcome, task)

    def _submit(self, outcome: Outcome, task: Task) -> bool:
        if outcome.status not in _NOTIFYING:
            return False
        recipients = self._recipients(task, outcome.status)
        webhooks = self._webhooks(outcome.status)
        if not recipients and not webhooks:
            return False
        if not self._accepting:
            self.dropped += 1
            log.warning(
                "notification dropped: the notifier is not running",
                task=task.name,
                execution_id=outcome.job.execution_id,
            )
            return False
        try:
            # Who is interested was decided here: the worker does not decide it again.
            self._queue.put_nowait((outcome, task, recipients, webhooks))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error(
                "notification dropped: queue full",
                task=task.name,
                execution_id=outcome.job.execution_id,
                queue_size=self._queue.maxsize,
            )
            return False
        return True

    def _recipients(self, task: Task, status: ExecutionStatus) -> list[str]:
        """The addresses that get mail about this ending (empty without `[smtp]`)."""
        recipients = [
            recipient.email
            for recipient in task.email_recipients
            if not (recipient.problems_only and status is ExecutionStatus.DONE)
        ]
        if recipients and self._smtp is None:
            if task.id not in self._warned_no_smtp:
                self._warned_no_smtp.add(task.id)
                log.warning(
                    "task has e-mail recipients but [smtp] is not configured: no mail is sent",
                    task=task.name,
                )
            return []
        return list(dict.fromkeys(recipients))  # each address once, in order

    def _webhooks(self, status: ExecutionStatus) -> list[tuple[int, WebhookSettings]]:
        return [
            (index, hook)
            for index, hook in enumerate(self._settings.webhooks)
            if str(status) in hook.events
        ]

    # -- the worker -----------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            outcome, task, recipients, webhooks = await self._queue.get()
            try:
                for delivery in await self._prepare(outcome, task, recipients, webhooks):
                    await self._delivery_slots.acquire()
                    running = asyncio.create_task(
                        self._deliver(delivery),
                        name=f"taskd-notify-{delivery.channel}-{outcome.job.execution_id}",
                    )
                    self._deliveries.add(running)
                    running.add_done_callback(self._delivery_ended)
            except Exception:
                log.exception(
                    "could not prepare notifications", execution_id=outcome.job.execution_id
                )
            finally:
                self._queue.task_done()

    def _delivery_ended(self, running: asyncio.Task[None]) -> None:
        self._deliveries.discard(running)
        self._delivery_slots.release()
        if not running.cancelled() and running.exception() is not None:
            # _deliver catches everything; this would be a bug in it.
            log.error("notification delivery crashed", error=repr(running.exception()))

    async def _prepare(
        self,
        outcome: Outcome,
        task: Task,
        recipients: list[str],
        webhooks: list[tuple[int, WebhookSettings]],
    ) -> list[_Delivery]:
        smtp = self._smtp
        if smtp is None:  # `[smtp]` removed by a reload since `submit`
            recipients = []
        execution_id = outcome.job.execution_id
        execution: Execution | None = None
        try:
            execution = await self._store.get_execution(execution_id)
        except Exception as error:  # pruned meanwhile, store closing: say what we know
            log.warning(
                "notifying without the execution record",
                execution_id=execution_id,
                error=str(error),
            )
        lines: tuple[LogEntry, ...] = ()
        if recipients and self._settings.log_lines:
            try:
                lines = await self._last_log_lines(task.id, execution_id, self._settings.log_lines)
            except Exception as error:
                log.warning(
                    "notifying without log lines", execution_id=execution_id, error=str(error)
                )
        report = self._report(outcome, task, execution, lines)
        deliveries: list[_Delivery] = []
        if smtp is not None:
            for recipient in recipients:
                message = self._mail(smtp, report, recipient)
                deliveries.append(
                    _Delivery(
                        channel="email",
                        target=recipient,
                        report=report,
                        send=_bind(self._channels.send_mail, smtp, message, recipient),
                    )
                )
        if webhooks:
            body = json.dumps(webhook_payload(report), separators=(",", ":")).encode()
            delivery_id = str(uuid.uuid4())
            for index, hook in webhooks:
                deliveries.append(
                    _Delivery(
                        channel="webhook",
                        target=f"webhooks[{index}] {_origin(hook.url)}",
                        report=report,
                        send=_bind(self._channels.post, hook, body, delivery_id),
                    )
                )
        return deliveries

    async def _last_log_lines(
        self, task_id: int, execution_id: int, count: int
    ) -> tuple[LogEntry, ...]:
        """The execution's last `count` log entries, oldest first.

        The store reads forwards only; an execution's log is capped
        (`log_entries_per_execution`), so paging through it is bounded.
        """
        last: deque[LogEntry] = deque(maxlen=count)
        offset = 0
        while True:
            page = await self._store.read_log(
                task_id, offset=offset, limit=_LOG_PAGE, execution_id=execution_id
            )
            last.extend(page)
            if len(page) < _LOG_PAGE:
                return tuple(last)
            offset = page[-1].idx + 1

    def _report(
        self,
        outcome: Outcome,
        task: Task,
        execution: Execution | None,
        lines: tuple[LogEntry, ...],
    ) -> Report:
        job = outcome.job
        return Report(
            task_id=task.id,
            task_name=task.name,
            execution_id=job.execution_id,
            status=str(outcome.status),
            status_msg=outcome.status_msg,
            trigger=str(execution.trigger) if execution else job.trigger.kind,
            attempt=execution.attempt if execution else job.trigger.attempt,
            scheduled_for=execution.scheduled_for if execution else job.due,
            started_at=execution.started_at if execution else None,
            finished_at=execution.finished_at if execution else None,
            host=(execution.dispatcher if execution else None) or self.hostname,
            log_lines=lines,
        )

    # -- delivering -----------------------------------------------------------------------

    async def _deliver(self, delivery: _Delivery) -> None:
        report = delivery.report
        bound = log.bind(
            channel=delivery.channel,
            target=delivery.target,
            task=report.task_name,
            execution_id=report.execution_id,
            status=report.status,
        )
        settings = self._settings
        attempt = 0
        try:
            while True:
                attempt += 1
                try:
                    async with self._connections:
                        await delivery.send()
                except FinalError as error:
                    self.failed += 1
                    bound.error("notification failed", attempts=attempt, error=str(error))
                    return
                except Exception as error:
                    if attempt >= settings.max_attempts:
                        self.failed += 1
                        bound.error("notification failed", attempts=attempt, error=describe(error))
                        return
                    delay = min(
                        settings.retry_max_delay_sec,
                        settings.retry_base_delay_sec * 2 ** (attempt - 1),
                    )
                    bound.warning(
                        "notification attempt failed",
                        attempt=attempt,
                        retry_in_sec=delay,
                        error=describe(error),
                    )
                    await self._clock.sleep(delay)
                else:
                    self.sent += 1
                    bound.info("notification sent", attempts=attempt)
                    return
        except asyncio.CancelledError:
            bound.warning("notification abandoned", attempts=attempt)
            raise

    def _mail(self, smtp: SmtpSettings, report: Report, recipient: str) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = f"[taskd] {report.task_name}: {report.status}"
        message["From"] = smtp.from_address
        message["To"] = recipient
        message["Date"] = email.utils.format_datetime(self._clock.now())
        message["Message-ID"] = email.utils.make_msgid("taskd", domain=self.hostname)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
        message.set_content(mail_body(report, self._settings.log_lines))
        return message


def _bind(function: Callable[..., Awaitable[None]], *args: Any) -> Callable[[], Awaitable[None]]:
    def call() -> Awaitable[None]:
        return function(*args)

    return call


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: paths and queries of webhooks often hold tokens."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"
