"""What a notification says: the report of one finished execution, as mail text or as a
webhook's JSON, and the webhook signature. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskd.model import LogEntry
from taskd.schedule import format_utc

EVENT_FINISHED = "execution.finished"


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """What a notification says about one finished execution."""

    task_id: int
    task_name: str
    execution_id: int
    status: str
    status_msg: str | None
    trigger: str
    attempt: int
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    host: str
    log_lines: tuple[LogEntry, ...] = ()

    @property
    def duration_sec(self) -> float | None:
        """Seconds from start to end, or None if either is unknown."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


def sign(secret: bytes, body: bytes) -> str:
    """The hex HMAC-SHA256 of `body` under `secret`, as in `X-Taskd-Signature: sha256=...`."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def _utc(instant: datetime | None) -> str | None:
    return format_utc(instant) if instant is not None else None


def _duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02} ({seconds:.0f} s)"


def mail_body(report: Report, log_lines: int) -> str:
    """The plain-text mail about one finished execution, with its last `log_lines` lines."""
    rows = [
        ("Task", f"{report.task_name} (id {report.task_id})"),
        ("Execution", str(report.execution_id)),
        ("Status", report.status),
        ("Message", report.status_msg or "-"),
        (
            "Trigger",
            report.trigger if not report.attempt else f"{report.trigger}, attempt {report.attempt}",
        ),
        ("Scheduled for", _utc(report.scheduled_for) or "-"),
        ("Started", _utc(report.started_at) or "-"),
        ("Finished", _utc(report.finished_at) or "-"),
        ("Duration", _duration_text(report.duration_sec)),
        ("Host", report.host),
    ]
    width = max(len(name) for name, _ in rows) + 1
    text = "".join(f"{name + ':':<{width}} {value}\n" for name, value in rows)
    if log_lines:
        if report.log_lines:
            text += f"\nLast {len(report.log_lines)} log lines (UTC):\n"
            text += "".join(
                f"{format_utc(entry.timestamp)} {entry.level:<7} {entry.msg}\n"
                for entry in report.log_lines
            )
        else:
            text += "\nNo log lines.\n"
    return text


def webhook_payload(report: Report) -> dict[str, Any]:
    """The JSON body POSTed to webhooks (event `execution.finished`)."""
    return {
        "event": EVENT_FINISHED,
        "task": {"id": report.task_id, "name": report.task_name},
        "execution": {
            "id": report.execution_id,
            "status": report.status,
            "status_msg": report.status_msg,
            "trigger": report.trigger,
            "started_at": _utc(report.started_at),
            "finished_at": _utc(report.finished_at),
            "duration_sec": report.duration_sec,
            "attempt": report.attempt,
        },
        "host": report.host,
    }
