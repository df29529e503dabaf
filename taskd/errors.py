"""Typed errors raised by taskd's library code.

Library code raises these; only the edges (`cli`, `daemon`, `api`) turn them into exit codes
or HTTP answers.
"""

from __future__ import annotations

from dataclasses import dataclass


class TaskdError(Exception):
    """Base class of every error taskd raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason an input was refused, with the attribute path it concerns.

    `path` uses dots for object keys and brackets for list indices, e.g. `schedules[1].hours[2]`;
    it is empty when the error concerns the input as a whole.
    """

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ValidationError(TaskdError, ValueError):
    """An input (schedule, task, config file, API body) was refused.

    Carries every problem found, not only the first, so a user fixes them in one round.
    """

    def __init__(self, errors: list[FieldError]) -> None:
        if not errors:
            raise ValueError("ValidationError needs at least one FieldError")
        self.errors: list[FieldError] = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))

    @classmethod
    def single(cls, path: str, reason: str) -> ValidationError:
        """Build the error for one problem."""
        return cls([FieldError(path, reason)])

    def prefixed(self, prefix: str) -> ValidationError:
        """Return the same errors with `prefix` put in front of every path."""
        return ValidationError(
            [FieldError(join_path(prefix, e.path), e.reason) for e in self.errors]
        )


def join_path(prefix: str, path: str) -> str:
    """Join two attribute paths: `join_path("task[0]", "hours[1]") == "task[0].hours[1]"`."""
    if not prefix:
        return path
    if not path:
        return prefix
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


class NotFoundError(TaskdError, LookupError):
    """A task, execution or defer id that does not exist."""


class ConflictError(TaskdError):
    """A write that conflicts with the stored state (version mismatch, config-owned task)."""


class ActionError(TaskdError):
    """An action that cannot apply now (pause with nothing running, run while `skip` runs, ...)."""


class NodeTimeoutError(ActionError, TimeoutError):
    """An action sent to the cluster node that runs the execution got no answer in time
    (API: 504, with the node named)."""


class DeferError(TaskdError, LookupError):
    """A defer id that is unknown, already used or expired."""


class StoreUnavailableError(TaskdError, OSError):
    """The store cannot do its work now: the disk is full, the file system is read-only or
    frozen, the database file cannot be opened. Not a bug and not the caller's fault: the
    same call may succeed later (the API answers 503 with Retry-After).

    `reason` says what failed, in the words of the backend ("database or disk is full").
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason
