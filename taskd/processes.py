"""Process groups that may outlive taskd: how a run's group is named and how it is ended.

The shell module runs each command as the leader of a new process group and records the
group id (the leader's pid) with the leader's start: the boot id and the start time in clock
ticks since boot, both from /proc. After a crash of taskd (kill -9, the OOM killer) the group
may still run; the next start ends it before the run is marked interrupted and retried, so a
command never runs twice at once.

Why a recorded group can be ended safely: Linux does not hand out a pid again while a
process group still carries it as its id, so while any member of the group lives, no other
process has that pid. Hence:
- the leader is alive with the recorded start: it is the same group;
- a process with the pid but another start: the pid was reused, so the old group had ended
  before; nothing is signalled;
- no process with the pid: the leader exited; processes whose group id is the pid are what
  is left of the recorded group (a new group of that id needs a new leader with the pid);
- another boot id: the machine restarted, nothing of the group can be left.

Linux only (/proc); elsewhere nothing is recorded and nothing is ended. The functions here
block (they read /proc and wait for processes to die): run them in a thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["end_group", "process_start"]

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# How long to wait for a group to die after SIGKILL (only a process stuck in the kernel,
# on a dead NFS mount say, outlives it).
_KILL_WAIT_SEC = 5.0
_POLL_SEC = 0.02


def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, process group id, start ticks) of a process, or None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # Fields after the command name (which may hold spaces and parentheses): the third
    # field of stat(5) comes first, so pgrp (5) is [2] and starttime (22) is [19].
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), fields[19]


def process_start(pid: int) -> str | None:
    """Return "<boot id>:<start ticks>" of a live process, or None (gone, or no /proc)."""
    boot, stat = _boot_id(), _stat(pid)
    if boot is None or stat is None:
        return None
    return f"{boot}:{stat[2]}"


def _members(pgid: int) -> list[int]:
    """The live (not zombie) processes whose process group is `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] not in {"Z", "X"}:
                found.append(int(entry.name))
    return found


def _wait_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SEC)  # a foreign process's death has nothing to wait on
    return True


def _signal(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def end_group(pgid: int, start: str, grace_sec: float) -> str:
    """End what is left of the recorded process group `pgid` whose leader started at `start`
    (as `process_start` returned it): SIGTERM (and SIGCONT, for a stopped group), up to
    `grace_sec` for it to exit, then SIGKILL. Returns what it found and did, in words.

    Never signals a group that is not the recorded one (see the module docstring). Blocks.
    """
    boot, _, ticks = start.partition(":")
    if _boot_id() != boot:
        return "not running (the machine restarted since)"
    leader = _stat(pgid)
    if leader is not None and leader[0] not in {"Z", "X"} and leader[2] != ticks:
        return f"not running (pid {pgid} is another process now; left alone)"
    members = _members(pgid)
    if not members:
        return "not running"
    _signal(pgid, signal.SIGTERM)
    _signal(pgid, signal.SIGCONT)
    if _wait_gone(pgid, grace_sec):
        return f"ended {len(members)} process(es) with SIGTERM"
    _signal(pgid, signal.SIGKILL)
    if _wait_gone(pgid, _KILL_WAIT_SEC):
        return f"ended {len(members)} process(es): SIGKILL after {grace_sec:g} s"
    return f"still running {_KILL_WAIT_SEC:g} s after SIGKILL: {_members(pgid)}"
