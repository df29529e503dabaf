"""How `taskd ctl` prints: aligned tables and key/value lists for people, JSON for scripts;
times in UTC, sizes, durations and progress in one cell."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

# ---------------------------------------------------------------------------------------
# Output


@dataclass(slots=True)
class Output:
    """Where results go: readable text, or with `json` the server's JSON documents."""

    json: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    notes: TextIO = field(default_factory=lambda: sys.stderr)

    def note(self, message: str) -> None:
        """Tell the user something that is neither a result nor a failure (on stderr)."""
        print(f"taskd: note: {message}", file=self.notes, flush=True)

    def document(self, data: Any) -> None:
        """Print one JSON document."""
        print(json.dumps(data, indent=2, ensure_ascii=False), file=self.stream)

    def result(self, answer: Mapping[str, Any], key: str) -> None:
        """Print an action's answer: the JSON document, or the one value `key` of it."""
        if self.json:
            self.document(answer)
        else:
            self.line(str(answer.get(key, "")))

    def json_line(self, data: Any) -> None:
        """Print one JSON object on one line (for streams)."""
        print(json.dumps(data, ensure_ascii=False), file=self.stream, flush=True)

    def line(self, text: str = "") -> None:
        """Print one line of text."""
        print(text, file=self.stream, flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Print rows in columns aligned on the widest cell, headers first."""
        widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
        for row in [headers, *rows]:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
            self.line("  ".join(cells).rstrip())

    def pairs(self, items: Sequence[tuple[str, str]]) -> None:
        """Print `key  value` lines, values aligned; a multi-line value stays aligned."""
        width = max((len(key) for key, _ in items), default=0)
        for key, value in items:
            lines = value.splitlines() or [""]
            self.line(f"{key:<{width}}  {lines[0]}".rstrip())
            for more in lines[1:]:
                self.line(f"{'':<{width}}  {more}")


def utc_time(value: Any, *, millis: bool = False) -> str:
    """An RFC 3339 time from the API, shown in UTC to the second (or millisecond)."""
    if not isinstance(value, str):
        return "-"
    try:
        instant = datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return value
    timespec = "milliseconds" if millis else "seconds"
    return instant.isoformat(timespec=timespec).replace("+00:00", "Z")


def seconds_between(start: Any, end: Any) -> float | None:
    """Seconds between two RFC 3339 times from the API, None if either is missing."""
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def duration_text(seconds: float | None) -> str:
    """A duration for people: `4.2 s`, `3 min 07 s`, `2 h 05 min`; `-` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def compact_json(value: Any) -> str:
    """One-line JSON, as written in config files and API bodies."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def byte_count(count: Any) -> str:
    """A byte count for people: 1.5 GB, 320 kB, 12 B (decimal units, as `df -H`)."""
    amount = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(amount) < 1000 or unit == "TB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    raise AssertionError("unreachable")


def progress_text(execution: Mapping[str, Any]) -> str:
    """An execution's progress and counters in one cell: `40 %, 1.2 GB of 3.0 GB, 12 of 30
    files, 85.0 MB/s`; `-` when the module reported none."""
    parts = []
    if isinstance(execution.get("progress"), int | float):
        parts.append(f"{execution['progress']:g} %")
    done, todo = execution.get("size_done"), execution.get("size_todo")
    if isinstance(done, int | float):
        parts.append(
            byte_count(done) + (f" of {byte_count(todo)}" if isinstance(todo, int | float) else "")
        )
    done, todo = execution.get("nodes_done"), execution.get("nodes_todo")
    if isinstance(done, int | float):
        parts.append(
            f"{done:g}" + (f" of {todo:g}" if isinstance(todo, int | float) else "") + " files"
        )
    if isinstance(execution.get("bandwidth"), int | float):
        parts.append(f"{byte_count(execution['bandwidth'])}/s")
    return ", ".join(parts) or "-"


def status_text(record: Mapping[str, Any]) -> str:
    """`status: message` of a task or an execution."""
    status = str(record.get("status", "-"))
    message = record.get("status_msg")
    return f"{status}: {message}" if message else status
