"""The shell module against real processes: output, exit status, pause, stop, cancellation.

Cancellation tests make this test process a child subreaper (Linux), so the grandchildren
orphaned when a shell dies are handed to it: the test reaps them itself and sees how they
died, instead of waiting for the system's init to do it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterator
from itertools import repeat
from pathlib import Path
from typing import Any

import pytest

from taskd.errors import ValidationError
from taskd.modules.base import LogLevel, ModuleError
from taskd.modules.registry import ModuleRegistry
from taskd.modules.shell import MAX_LINE_BYTES, SLICE_LINES, ShellModule
from taskd.testing import FakeContext, wait_until

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="reads /proc, uses prctl"),
    # Nothing may block the loop; garbage is collected after each test, so an unclosed
    # transport warns in its own test.
    pytest.mark.usefixtures("no_blocking", "collect_garbage"),
]

_PR_SET_CHILD_SUBREAPER = 36
# Prints the shell's pid, then the pids of two background sleeps, then waits for them.
_FAMILY = "echo $$; sleep 1000 & echo $!; sleep 1000 & echo $!; wait"
# Prints its pid, then a tick every 10 ms for at most 5 s.
_TICKER = """
import os, time
print(os.getpid(), flush=True)
for i in range(500):
    print("tick", i, flush=True)
    time.sleep(0.01)
"""


def shell_ctx(grace: float = 0.2, **raw: Any) -> FakeContext:
    """A FakeContext holding `raw` validated as shell params, as the runner would hand it."""
    params = ModuleRegistry.builtin().validate("shell", raw)
    return FakeContext(params=params, stop_grace_sec=grace)


def state_of(pid: int) -> str | None:
    """The process state letter from /proc (R, S, T, Z, ...), or None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rpartition(")")[2].split()[0]


async def wait_for_state(pid: int, wanted: set[str | None]) -> str | None:
    """Wait (bounded) until the process is in one of the `wanted` states; return the state.

    Signals are delivered asynchronously, so the state is polled: an OS edge.
    """
    deadline = time.monotonic() + 1.0
    # /proc offers nothing to wait on: a bounded poll.
    while (state := state_of(pid)) not in wanted and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    return state


async def reap_orphan(pid: int) -> int:
    """Reap an orphan handed to this (subreaper) process; return its wait status."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        reaped, status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG: never blocks)
        if reaped == pid:
            return status
        await asyncio.sleep(0.005)
    raise AssertionError(f"process {pid} is still running")


async def finish(run: asyncio.Task[str]) -> str:
    """Await the module's task, failing fast instead of hanging if it does not end."""
    async with asyncio.timeout(3.0):
        return await run


def pids_logged(ctx: FakeContext) -> list[int]:
    """The pids a script printed, one per line."""
    return [int(msg) for msg in ctx.messages(LogLevel.INFO) if msg.isdigit()]


async def wait_for_pids(ctx: FakeContext, count: int) -> list[int]:
    """Wait until the script printed `count` pids; return them."""
    await ctx.wait_for_log(lambda _: len(pids_logged(ctx)) >= count)
    return pids_logged(ctx)


def output(ctx: FakeContext, level: LogLevel = LogLevel.INFO) -> list[str]:
    """What the process wrote at `level`, without the module's own notes."""
    notes = ("paused:", "resumed:", "stop requested:", "killed what", "cancelled:")
    return [msg for msg in ctx.messages(level) if not msg.startswith(notes)]


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Make this process a child subreaper for the test, and undo it afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("prctl(PR_SET_CHILD_SUBREAPER) is not available")
    yield
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


async def assert_group_gone(pgid: int, orphans: list[int]) -> None:
    """The orphans died of SIGKILL, the leader was reaped, and the group no longer exists."""
    for pid in orphans:
        status = await reap_orphan(pid)
        assert os.WIFSIGNALED(status), (pid, status)
        assert os.WTERMSIG(status) == signal.SIGKILL
    assert state_of(pgid) is None  # reaped by the module, not left a zombie
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


# ---- Output and exit status


async def test_stdout_lines_reach_the_log_in_order() -> None:
    """Each stdout line is one info entry, in order; exit code 0 returns "exit code 0"."""
    ctx = shell_ctx(command="for i in 1 2 3 4 5; do echo line $i; done")
    assert await ShellModule().run(ctx) == "exit code 0"
    assert output(ctx) == [f"line {i}" for i in range(1, 6)]


async def test_started_process_is_always_the_first_line() -> None:
    """Output that arrives before the module's "started process" note waits for it: the
    note is the run's first log line, however fast the command writes (20 tries)."""
    for _ in range(20):
        ctx = shell_ctx(argv=["seq", "1", "3000"])
        assert await ShellModule().run(ctx) == "exit code 0"
        assert ctx.logs[0][1].startswith("started process "), ctx.logs[:3]
        assert output(ctx) == [str(i) for i in range(1, 3001)]


async def test_stderr_lines_are_warnings() -> None:
    """stderr lines go to the log at warning, stdout lines at info."""
    ctx = shell_ctx(argv=["sh", "-c", "echo out; echo err >&2; echo err2 >&2"])
    await ShellModule().run(ctx)
    assert output(ctx, LogLevel.INFO) == ["out"]
    assert output(ctx, LogLevel.WARNING) == ["err", "err2"]


async def test_nonzero_exit_raises_module_error() -> None:
    """Exit code 3 raises ModuleError("exit code 3") after the output was logged."""
    ctx = shell_ctx(command="echo before; exit 3")
    with pytest.raises(ModuleError, match=r"^exit code 3$"):
        await ShellModule().run(ctx)
    assert output(ctx) == ["before"]


async def test_death_by_signal_names_the_signal() -> None:
    """A process killed by a signal outside a stop raises ModuleError naming the signal."""
    ctx = shell_ctx(command="kill -KILL $$")
    with pytest.raises(ModuleError, match=r"^killed by signal SIGKILL$"):
        await ShellModule().run(ctx)


async def test_invalid_utf8_replaced_long_lines_cut_last_line_kept() -> None:
    """Bad UTF-8 becomes U+FFFD, a line is cut at 4 KiB, an unterminated last line is kept."""
    script = r"printf '\377ok\n'; head -c 5000 /dev/zero | tr '\0' a; echo; printf tail"
    ctx = shell_ctx(command=script)
    await ShellModule().run(ctx)
    dropped = 5000 - MAX_LINE_BYTES
    assert output(ctx) == [
        "\ufffdok",
        "a" * MAX_LINE_BYTES + f" [line cut at {MAX_LINE_BYTES} bytes, {dropped} more dropped]",
        "tail",
    ]


async def test_a_flood_of_one_character_lines_never_blocks_the_loop() -> None:
    """100,000 one-character lines: every line logged, in order, the loop never held 50 ms
    (a 256 KiB chunk of them is split a slice at a time; `no_blocking` fails the test)."""
    ctx = shell_ctx(command="yes x | head -n 100000")
    assert await ShellModule().run(ctx) == "exit code 0"
    # Compared in C: a Python loop over 200,000 entries would itself hold the loop.
    assert ctx.logs[1:] == [("info", "x")] * 100_000


async def test_reading_waits_while_the_log_is_full() -> None:
    """While the log is full the pipe is not read (the process blocks); then all comes."""
    ctx = shell_ctx(command="seq 5000")
    ctx.fill_log()
    run = asyncio.create_task(ShellModule().run(ctx))
    await wait_until(lambda: ctx.log_waits >= 1)
    held = len(ctx.logs)
    assert held <= SLICE_LINES + 1  # "started process" and one slice, no more
    await asyncio.sleep(0.2)  # an OS edge: the process would write on if it could
    assert len(ctx.logs) == held
    assert not run.done()
    ctx.drain_log()
    async with asyncio.timeout(10):
        assert await run == "exit code 0"
    assert ctx.logs[1:] == list(zip(repeat("info"), map(str, range(1, 5_001)), strict=False))


async def test_past_the_head_only_the_last_lines_of_a_chunk_are_logged() -> None:
    """Once the log keeps only its last K entries, a chunk's earlier lines are counted
    (`log_left_out`), not logged: every line is logged or counted, the last K are logged."""
    ctx = shell_ctx(command="seq 100000")
    ctx.keeps_last = 5
    assert await ShellModule().run(ctx) == "exit code 0"
    lines = output(ctx)
    assert len(lines) + ctx.left_out == 100_000
    assert len(lines) < 2_000  # a few per chunk
    assert lines[-5:] == [str(n) for n in range(99_996, 100_001)]
    assert [int(line) for line in lines] == sorted(int(line) for line in lines)


async def test_the_process_group_is_recorded_as_it_starts() -> None:
    """The run records its process group (the leader's pid) once, before it ends."""
    ctx = shell_ctx(command="echo $$")
    assert await ShellModule().run(ctx) == "exit code 0"
    assert ctx.process_groups == [int(output(ctx)[0])]


async def test_env_is_merged_over_the_daemon_environment_and_cwd_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """env adds and overrides variables, null unsets one, others are inherited; cwd applies."""
    monkeypatch.setenv("TASKD_TEST_KEPT", "kept")
    monkeypatch.setenv("TASKD_TEST_GONE", "gone")
    ctx = shell_ctx(
        command='echo "$GREETING|$TASKD_TEST_KEPT|${TASKD_TEST_GONE-unset}|$(pwd -P)"',
        env={"GREETING": "hi", "TASKD_TEST_GONE": None},
        cwd=str(tmp_path),
    )
    await ShellModule().run(ctx)
    assert output(ctx) == [f"hi|kept|unset|{tmp_path}"]  # pytest resolves tmp_path


async def test_stdin_is_dev_null() -> None:
    """A process reading stdin gets end-of-file at once instead of hanging."""
    ctx = shell_ctx(command="cat; echo eof")
    assert await ShellModule().run(ctx) == "exit code 0"
    assert output(ctx) == ["eof"]


async def test_missing_executable_and_bad_cwd_raise_module_error(tmp_path: Path) -> None:
    """A missing program or directory ends in ModuleError carrying the OS message."""
    with pytest.raises(ModuleError, match=r"^cannot run '/nonexistent/prog': No such file"):
        await ShellModule().run(shell_ctx(argv=["/nonexistent/prog"]))
    missing = str(tmp_path / "missing")
    with pytest.raises(ModuleError, match=rf"^cannot change to directory '{missing}': No such"):
        await ShellModule().run(shell_ctx(argv=["true"], cwd=missing))


async def test_leader_is_reaped() -> None:
    """After run returns, the process is gone from /proc: no zombie is left."""
    ctx = shell_ctx(command="echo $$")
    await ShellModule().run(ctx)
    [pid] = pids_logged(ctx)
    assert state_of(pid) is None


async def test_leftover_background_process_is_killed_at_exit(subreaper: None) -> None:
    """A background process still holding stdout is killed when the shell exits; no hang."""
    ctx = shell_ctx(command="echo $$; sleep 1000 & echo $!")
    started = time.monotonic()
    assert await ShellModule().run(ctx) == "exit code 0"
    assert time.monotonic() - started < 0.9  # did not wait out the output drain
    leader, orphan = pids_logged(ctx)
    assert f"killed what was left of process group {leader}" in ctx.messages(LogLevel.INFO)
    await assert_group_gone(leader, [orphan])


# ---- Pause and resume


@pytest.mark.slow
async def test_pause_stops_the_group_and_resume_continues_it() -> None:
    """Paused: the process is in state T and prints nothing; resumed: it prints again."""
    # One process that never forks: a shell forking a child with vfork would show state D
    # (waiting for the stopped child), not T.
    ctx = shell_ctx(argv=[sys.executable, "-c", _TICKER])
    run = asyncio.create_task(ShellModule().run(ctx))
    [pid] = await wait_for_pids(ctx, 1)
    await ctx.wait_for_log(lambda msg: msg == "tick 2")

    ctx.pause()
    assert await wait_for_state(pid, {"T"}) == "T"
    await asyncio.sleep(0.05)  # let output written before the stop be read
    ticks = len([msg for msg in ctx.messages() if msg.startswith("tick")])
    await asyncio.sleep(0.2)
    assert len([msg for msg in ctx.messages() if msg.startswith("tick")]) == ticks
    assert state_of(pid) == "T"

    ctx.resume()
    await ctx.wait_for_log(lambda msg: msg == f"tick {ticks}")
    assert await wait_for_state(pid, {"S", "R"}) in {"S", "R"}

    ctx.stop()
    assert await finish(run) == "stopped by SIGTERM"
    assert f"paused: stopped process group {pid}" in ctx.messages()
    assert f"resumed: continued process group {pid}" in ctx.messages()


# ---- Stop


async def test_stop_sends_sigterm_that_a_script_can_trap() -> None:
    """A stop sends SIGTERM; a script that traps it logs it and exits on its own terms."""
    ctx = shell_ctx(
        grace=1.5,
        command="trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
    )
    run = asyncio.create_task(ShellModule().run(ctx))
    await ctx.wait_for_log(lambda msg: msg == "ready")
    ctx.stop()
    assert await finish(run) == "exit code 0"
    assert "got TERM" in output(ctx)
    assert not any("SIGKILL" in msg for msg in ctx.messages())


async def test_script_ignoring_sigterm_is_killed_after_the_grace() -> None:
    """A process ignoring SIGTERM gets SIGKILL once the grace has passed."""
    ctx = shell_ctx(grace=0.2, command="trap '' TERM; echo ready; while :; do sleep 0.05; done")
    run = asyncio.create_task(ShellModule().run(ctx))
    await ctx.wait_for_log(lambda msg: msg == "ready")
    stopped_at = time.monotonic()
    ctx.stop()
    assert await finish(run) == "stopped by SIGKILL"
    assert 0.2 <= time.monotonic() - stopped_at < 1.0
    assert "still running 0.2 s after SIGTERM: sent SIGKILL" in ctx.messages(LogLevel.WARNING)


async def test_stop_while_paused_still_ends_the_process() -> None:
    """A stop during a pause continues the group so that SIGTERM takes effect."""
    ctx = shell_ctx(grace=1.5, argv=["sh", "-c", "echo $$; exec sleep 1000"])
    run = asyncio.create_task(ShellModule().run(ctx))
    [pid] = await wait_for_pids(ctx, 1)
    ctx.pause()
    assert await wait_for_state(pid, {"T"}) == "T"
    ctx.stop()
    assert await finish(run) == "stopped by SIGTERM"


# ---- Cancellation: forced stop and timeout


async def test_cancel_kills_the_whole_group(subreaper: None) -> None:
    """task.cancel() (a forced stop) SIGKILLs the shell and both background sleeps."""
    ctx = shell_ctx(command=_FAMILY)
    run = asyncio.create_task(ShellModule().run(ctx))
    leader, *orphans = await wait_for_pids(ctx, 3)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finish(run)
    await assert_group_gone(leader, orphans)
    assert f"cancelled: killed process group {leader}" in ctx.messages(LogLevel.WARNING)


@pytest.mark.slow
async def test_timeout_kills_the_whole_group(subreaper: None) -> None:
    """A timeout (asyncio.wait_for) leaves no process of the group behind."""
    ctx = shell_ctx(command=_FAMILY)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ShellModule().run(ctx), timeout=0.3)
    leader, *orphans = pids_logged(ctx)
    assert len(orphans) == 2
    await assert_group_gone(leader, orphans)


async def test_cancel_while_paused_kills_the_stopped_group(subreaper: None) -> None:
    """A forced stop of a paused (SIGSTOPped) group kills it too."""
    ctx = shell_ctx(command=_FAMILY)
    run = asyncio.create_task(ShellModule().run(ctx))
    leader, *orphans = await wait_for_pids(ctx, 3)
    ctx.pause()
    assert await wait_for_state(orphans[0], {"T"}) == "T"
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finish(run)
    await assert_group_gone(leader, orphans)


# ---- Params


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, ["task_params: give exactly one of argv and command"]),
        ({"argv": ["true"], "command": "true"}, ["task_params.command: give exactly one of"]),
        ({"argv": []}, ["task_params.argv: must name a program in its first item"]),
        ({"command": " "}, ["task_params.command: must not be empty"]),
        ({"command": "x", "env": {"A": 1}}, ["task_params.env.A: must be a string (or null"]),
        ({"command": "x", "env": {"A=B": "c"}}, ["task_params.env.A=B: is not a valid variable"]),
        ({"command": "x", "env": []}, ["task_params.env: must be an object, got an array"]),
        ({"argv": ["a\0b"]}, ["task_params.argv[0]: must not contain a NUL character"]),
    ],
)
def test_params_are_checked_by_the_registry(raw: dict[str, Any], expected: list[str]) -> None:
    """The registry refuses shell params breaking the module's rules, at their paths."""
    with pytest.raises(ValidationError) as info:
        ModuleRegistry.builtin().validate("shell", raw)
    errors = [str(error) for error in info.value.errors]
    assert len(errors) == len(expected), errors
    assert all(error.startswith(start) for error, start in zip(errors, expected, strict=True))
