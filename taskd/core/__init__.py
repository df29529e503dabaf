"""The operations every front end shares (`Core`), and following a task's log."""

from taskd.core.core import ConfigChanges, Core, config_errors_for, visible_to
from taskd.core.follow import Closing, Follow, LogEvent, Quiet, RunEnded, RunFollowed

__all__ = [
    "Closing",
    "ConfigChanges",
    "Core",
    "Follow",
    "LogEvent",
    "Quiet",
    "RunEnded",
    "RunFollowed",
    "config_errors_for",
    "visible_to",
]
