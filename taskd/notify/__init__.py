"""Notifications after an execution ends: mail (SMTP) and webhooks (POST JSON).

`Notifier` queues and delivers them (see `taskd.notify.notifier`); `taskd.notify.report`
builds what they say.
"""

from taskd.notify.notifier import ExecutionReader, Notifier
from taskd.notify.report import EVENT_FINISHED, sign

__all__ = ["EVENT_FINISHED", "ExecutionReader", "Notifier", "sign"]
