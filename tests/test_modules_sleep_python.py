"""The sleep module (steps, progress, pause, stop, resume) and the python module (targets)."""

from __future__ import annotations

import asyncio
import itertools
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskd.errors import ValidationError
from taskd.modules.base import LogLevel, ModuleError
from taskd.modules.python import PythonModule
from taskd.modules.registry import ModuleRegistry
from taskd.modules.sleep import SleepModule
from taskd.testing import FakeContext, wait_until

pytestmark = pytest.mark.usefixtures("no_blocking")  # nothing may block the event loop


def module_ctx(module: str, ctx_class: type[FakeContext] = FakeContext, **raw: Any) -> FakeContext:
    """A context holding `raw` validated for `module` by the registry."""
    return ctx_class(params=ModuleRegistry.builtin().validate(module, raw))


def percents(ctx: FakeContext) -> list[float]:
    """The progress percentages reported, in order."""
    return [report["percent"] for report in ctx.progress_reports]


class StopAtHalf(FakeContext):
    """Requests a stop as soon as the module reports 50 % or more."""

    def progress(self, **fields: Any) -> None:
        """Record the report; stop once it reaches 50 %."""
        super().progress(**fields)
        if fields.get("percent", 0) >= 50:
            self.stop()


# ---- sleep


async def test_sleep_runs_every_step_and_reports_progress() -> None:
    """All steps run; progress goes 20, 40, ..., 100; no state is saved."""
    ctx = module_ctx("sleep", seconds=0.05, steps=5)
    assert await SleepModule().run(ctx) == "slept 0.05 s in 5 steps"
    assert percents(ctx) == [20, 40, 60, 80, 100]
    assert ctx.saved_states == []


async def test_sleep_fail_raises_module_error_at_the_end() -> None:
    """fail=true raises ModuleError after the last step."""
    ctx = module_ctx("sleep", seconds=0, steps=2, fail=True)
    with pytest.raises(ModuleError, match="failed on purpose"):
        await SleepModule().run(ctx)
    assert percents(ctx) == [50, 100]


async def test_sleep_stop_saves_done_steps_and_returns() -> None:
    """A stop after step 2 of 4 saves {"done_steps": 2} and returns at once."""
    ctx = module_ctx("sleep", StopAtHalf, seconds=0.2, steps=4)
    assert await SleepModule().run(ctx) == "stopped after 2 steps"
    assert ctx.saved_states == [{"done_steps": 2}]
    assert percents(ctx) == [25, 50]


async def test_sleep_stop_does_not_wait_out_a_long_step() -> None:
    """A stop in the middle of a 100 s step returns promptly, with no step done."""
    ctx = module_ctx("sleep", seconds=100, steps=1)
    asyncio.get_running_loop().call_later(0.05, ctx.stop)
    started = time.monotonic()
    assert await SleepModule().run(ctx) == "stopped after 0 steps"
    assert time.monotonic() - started < 1.0
    assert ctx.saved_states == [{"done_steps": 0}]


async def test_sleep_resumes_from_saved_state() -> None:
    """With state {"done_steps": 3} of 4, only the last step runs."""
    ctx = module_ctx("sleep", seconds=0.04, steps=4)
    ctx.state = {"done_steps": 3}
    assert await SleepModule().run(ctx) == "slept 0.04 s in 4 steps"
    assert percents(ctx) == [75, 100]
    assert "resuming after step 3 of 4" in ctx.messages(LogLevel.INFO)


async def test_sleep_clears_the_saved_state_once_it_has_slept_the_rest() -> None:
    """The saved steps serve one execution: once it has slept the rest it saves `{}`, so the
    task's next run sleeps every step again instead of "resuming after step 3" for good."""
    resumed = module_ctx("sleep", seconds=0.04, steps=4)
    resumed.state = {"done_steps": 3}
    await SleepModule().run(resumed)
    assert resumed.saved_states == [{}]
    following = module_ctx("sleep", seconds=0.04, steps=4)
    following.state = resumed.saved_states[-1]
    await SleepModule().run(following)
    assert percents(following) == [25, 50, 75, 100]
    assert following.messages(LogLevel.INFO) == []
    assert following.saved_states == []


async def test_sleep_ignores_saved_state_that_does_not_fit() -> None:
    """A saved done_steps beyond the steps is ignored with a warning; all steps run."""
    ctx = module_ctx("sleep", seconds=0, steps=2)
    ctx.state = {"done_steps": 7}
    await SleepModule().run(ctx)
    assert percents(ctx) == [50, 100]
    assert ctx.messages(LogLevel.WARNING) == ["ignoring saved done_steps=7: not in 0..2"]


async def test_sleep_pause_holds_at_checkpoint_until_resume() -> None:
    """Paused, the module waits at its checkpoint before reporting; resumed, it finishes."""
    ctx = module_ctx("sleep", seconds=0.02, steps=2)
    ctx.pause()
    run = asyncio.create_task(SleepModule().run(ctx))
    async with asyncio.timeout(2):
        await ctx.held_at_checkpoint.wait()
    assert ctx.progress_reports == []
    ctx.resume()
    async with asyncio.timeout(2):
        assert await run == "slept 0.02 s in 2 steps"
    assert percents(ctx) == [50, 100]


async def test_sleep_stop_while_paused_saves_state() -> None:
    """A stop while held at a checkpoint lets the module save its state and return."""
    ctx = module_ctx("sleep", seconds=0.02, steps=2)
    ctx.pause()
    run = asyncio.create_task(SleepModule().run(ctx))
    async with asyncio.timeout(2):
        await ctx.held_at_checkpoint.wait()
        ctx.stop()
        assert await run == "stopped after 1 steps"
    assert ctx.saved_states == [{"done_steps": 1}]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, ["task_params.seconds: required parameter is missing"]),
        ({"seconds": -1}, ["task_params.seconds: must be at least 0, got -1"]),
        ({"seconds": 1, "steps": 0}, ["task_params.steps: must be at least 1, got 0"]),
        ({"seconds": 1, "fail": "yes"}, ["task_params.fail: must be true or false, got the"]),
    ],
)
def test_sleep_params_are_checked(raw: dict[str, Any], expected: list[str]) -> None:
    """Missing seconds, negative seconds, zero steps, a non-bool fail: refused at their paths."""
    with pytest.raises(ValidationError) as info:
        ModuleRegistry.builtin().validate("sleep", raw)
    errors = [str(error) for error in info.value.errors]
    assert len(errors) == len(expected)
    assert all(error.startswith(start) for error, start in zip(errors, expected, strict=True))


# ---- python

_counter = itertools.count()


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a uniquely named importable module; return its name. Unloaded afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"taskd_test_target_{next(_counter)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


GOOD_TARGET = """
    async def main(ctx, greeting="hi"):
        ctx.log("info", greeting)
        await ctx.checkpoint()
        return f"said {greeting}"

    async def quiet(ctx):
        return None

    async def fails(ctx):
        raise ValueError("bad input")

    def sync(ctx):
        return "x"

    VALUE = 3

    class Jobs:
        @staticmethod
        async def nightly(ctx):
            return "nightly done"

    class Callable:
        async def __call__(self, ctx):
            return "called"

    instance = Callable()
"""


async def run_python(target: str, **kwargs: Any) -> tuple[str | None, FakeContext]:
    """Run the python module on `target`; return its result and the context."""
    raw: dict[str, Any] = {"target": target, "kwargs": kwargs} if kwargs else {"target": target}
    ctx = module_ctx("python", **raw)
    return await PythonModule().run(ctx), ctx


async def test_python_awaits_target_with_ctx_and_kwargs(
    write_module: Callable[[str], str],
) -> None:
    """The target is awaited as fn(ctx, **kwargs); its result is the status message."""
    name = write_module(GOOD_TARGET)
    result, ctx = await run_python(f"{name}:main", greeting="hello")
    assert result == "said hello"
    assert ctx.messages() == ["hello"]


async def test_python_none_dotted_attribute_and_async_callable(
    write_module: Callable[[str], str],
) -> None:
    """None is returned as is; `mod:Class.method` and an async __call__ instance both work."""
    name = write_module(GOOD_TARGET)
    assert (await run_python(f"{name}:quiet"))[0] is None
    assert (await run_python(f"{name}:Jobs.nightly"))[0] == "nightly done"
    assert (await run_python(f"{name}:instance"))[0] == "called"


async def test_python_exception_of_target_propagates(write_module: Callable[[str], str]) -> None:
    """An exception raised by the target reaches the runner unchanged."""
    name = write_module(GOOD_TARGET)
    with pytest.raises(ValueError, match="bad input"):
        await run_python(f"{name}:fails")


async def test_python_missing_module_is_not_an_import_error() -> None:
    """A target module (or its package) that does not exist is reported as not found."""
    with pytest.raises(ModuleError, match=r"^module 'taskd_no_such_target' not found$"):
        await run_python("taskd_no_such_target:main")
    with pytest.raises(ModuleError, match=r"^module 'taskd_no_such_pkg.jobs' not found$"):
        await run_python("taskd_no_such_pkg.jobs:main")


async def test_python_failing_import_is_reported_with_its_traceback(
    write_module: Callable[[str], str],
) -> None:
    """A missing dependency or an error inside the target module is an import failure."""
    missing_dep = write_module("import taskd_missing_dependency_xyz\n")
    with pytest.raises(ModuleError) as info:
        await run_python(f"{missing_dep}:main")
    assert str(info.value) == (
        f"importing module {missing_dep!r} failed: ModuleNotFoundError: "
        "No module named 'taskd_missing_dependency_xyz'"
    )

    raising = write_module("raise RuntimeError('boom at import')\n")
    ctx = module_ctx("python", target=f"{raising}:main")
    with pytest.raises(ModuleError, match=r"failed: RuntimeError: boom at import$"):
        await PythonModule().run(ctx)
    [traceback_text] = ctx.messages(LogLevel.ERROR)
    assert traceback_text.startswith("Traceback (most recent call last):")
    assert f"{raising}.py" in traceback_text


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("nope", r"^module '{name}' has no attribute 'nope'$"),
        ("Jobs.nope", r"^module '{name}' has no attribute 'Jobs.nope'$"),
        ("VALUE", r"^{name}:VALUE is a int, not a coroutine function$"),
        ("sync", r"^{name}:sync is not a coroutine function \(define it with async def\)$"),
    ],
)
async def test_python_bad_attribute_messages(
    write_module: Callable[[str], str], attr: str, message: str
) -> None:
    """A missing attribute, a value, a plain function: each has its own message."""
    name = write_module(GOOD_TARGET)
    with pytest.raises(ModuleError, match=message.format(name=name)):
        await run_python(f"{name}:{attr}")


async def test_python_kwargs_the_target_does_not_take(write_module: Callable[[str], str]) -> None:
    """kwargs the function does not accept fail before it is called."""
    name = write_module(GOOD_TARGET)
    with pytest.raises(ModuleError, match=r"cannot be called so: .*unexpected keyword .*'nope'"):
        await run_python(f"{name}:main", nope=1)


@pytest.mark.parametrize(
    "target", ["pkg.mod", "pkg.mod:", ":main", "pkg mod:main", "a..b:c", "1a:b"]
)
def test_python_target_format_is_checked_when_saved(target: str) -> None:
    """A target not shaped `package.module:function` is refused by the registry."""
    with pytest.raises(ValidationError) as info:
        ModuleRegistry.builtin().validate("python", {"target": target})
    assert [str(e) for e in info.value.errors] == [
        f"task_params.target: must be 'package.module:function', got {target!r}"
    ]


CHATTY_TARGET = """
    import asyncio

    async def chatty(ctx, lines=3):
        try:
            for i in range(lines):
                ctx.log("info", f"line {i}")
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            ctx.log("info", "cancelled")
            raise
        return "done"
"""


async def test_python_target_is_held_at_its_next_await_while_the_log_is_full(
    write_module: Callable[[str], str],
) -> None:
    """`ctx.log` never blocks; while the log is full the target is held at its next await
    until the log has drained, then goes on where it was."""
    name = write_module(CHATTY_TARGET)
    ctx = module_ctx("python", target=f"{name}:chatty")
    ctx.fill_log()
    run = asyncio.create_task(PythonModule().run(ctx))
    for _ in range(20):
        await asyncio.sleep(0)
    assert ctx.messages() == ["line 0"]
    assert ctx.log_waits == 1
    ctx.drain_log()
    assert await run == "done"
    assert ctx.messages() == ["line 0", "line 1", "line 2"]


async def test_python_target_held_for_log_room_sees_its_cancellation(
    write_module: Callable[[str], str],
) -> None:
    """A target held for log room is cancelled like any other (a forced stop, a timeout):
    the CancelledError reaches the target's own code."""
    name = write_module(CHATTY_TARGET)
    ctx = module_ctx("python", target=f"{name}:chatty")
    ctx.fill_log()
    run = asyncio.create_task(PythonModule().run(ctx))
    await wait_until(lambda: ctx.log_waits == 1)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert ctx.messages() == ["line 0", "cancelled"]
