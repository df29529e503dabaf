"""The `sleep` module: wait `seconds` in `steps`, reporting progress; for demos and tests.

It shows the cooperative contract in its simplest form: after each step it passes a
checkpoint (so a pause holds it there), reports its progress, and on a stop request saves
`{"done_steps": n}` and returns; the next execution continues after the saved step, and
clears the saved state once it has slept the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from taskd.modules.base import LogLevel, ModuleContext, ModuleError

__all__ = ["SleepModule"]


class SleepModule:
    """Sleeps `seconds` in `steps`; with `fail`, raises `ModuleError` at the end."""

    name = "sleep"
    description: Mapping[str, str] = {
        "en-US": "Waits the given number of seconds in steps, reporting progress; "
        "for demos and tests.",
        "de-DE": "Wartet die angegebene Anzahl Sekunden in Schritten und meldet den "
        "Fortschritt; für Demos und Tests.",
    }
    params: list[dict[str, Any]] = [  # noqa: RUF012 (read-only by contract)
        {"name": "seconds", "type": "float", "required": True, "minimum": 0},
        {"name": "steps", "type": "int", "default": 10, "minimum": 1},
        {"name": "fail", "type": "bool", "default": False},
    ]

    async def run(self, ctx: ModuleContext) -> str:
        """Sleep step by step; return a status message, or raise if `fail` is set."""
        seconds: float = ctx.params["seconds"]
        steps: int = ctx.params["steps"]
        step_sec = seconds / steps
        done = _resumed_steps(ctx, steps)
        if done:
            ctx.log(LogLevel.INFO, f"resuming after step {done} of {steps}")
            ctx.progress(percent=100 * done / steps)
        while done < steps:
            # Sleep one step, or less if a stop comes: a long step must not delay a stop.
            try:
                async with asyncio.timeout(step_sec):
                    await ctx.wait_stopping()
            except TimeoutError:
                done += 1
                await ctx.checkpoint()
                ctx.progress(percent=100 * done / steps)
            if ctx.stopping and done < steps:
                await ctx.save_state({"done_steps": done})
                return f"stopped after {done} steps"
        if ctx.state:
            # The saved steps are used up: the next run starts from the first step again.
            await ctx.save_state({})
        if ctx.params["fail"]:
            raise ModuleError(f"failed on purpose after {seconds:g} s (fail is set)")
        return f"slept {seconds:g} s in {steps} steps"


def _resumed_steps(ctx: ModuleContext, steps: int) -> int:
    """The steps an earlier execution saved as done, or 0."""
    if ctx.state is None or "done_steps" not in ctx.state:
        return 0
    done = ctx.state["done_steps"]
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= steps:
        # State from another version of the task (steps changed): start over, say why.
        ctx.log(LogLevel.WARNING, f"ignoring saved done_steps={done!r}: not in 0..{steps}")
        return 0
    return done
