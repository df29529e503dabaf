"""The `python` module: await an importable coroutine function with the execution's context.

`target` is `"package.module:function"` (the attribute part may be dotted:
`"pkg.jobs:Nightly.run"`); the function is called as `await function(ctx, **kwargs)` and its
result, if any, becomes the status message. Resolving the target fails with a precise
`ModuleError`, the way uvicorn's importer does: a malformed target (refused already when the
task is saved), the target module not found, an error raised while importing it (a missing
dependency included, which is not the same as the module itself missing), a missing
attribute, an attribute that is not a coroutine function, keyword arguments it does not take.

The target's log is paced like a shell command's output: `ctx.log` never blocks, so while
the store's log backlog is full (`ctx.log_full`) the target is held at its next `await`
(after what it awaited has finished, before it goes on) until the backlog has drained
(`ctx.wait_log_room`). What waits to be written stays within the store's bound plus what
one target logs between two of its awaits, however long it goes on logging.
"""

from __future__ import annotations

import importlib
import inspect
import re
import traceback
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any

from taskd.errors import FieldError
from taskd.modules.base import LogLevel, ModuleContext, ModuleError

__all__ = ["PythonModule", "resolve_target"]

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_TARGET = re.compile(
    rf"(?P<module>{_IDENTIFIER}(\.{_IDENTIFIER})*):(?P<attr>{_IDENTIFIER}(\.{_IDENTIFIER})*)"
)
_MAX_STATUS_CHARS = 500


class PythonModule:
    """Awaits `target(ctx, **kwargs)`; see the module docstring."""

    name = "python"
    description: Mapping[str, str] = {
        "en-US": "Awaits an importable coroutine function, 'package.module:function', "
        "called with the execution's context.",
        "de-DE": "Ruft eine importierbare Coroutine-Funktion 'paket.modul:funktion' mit dem "
        "Kontext der Ausführung auf.",
    }
    params: list[dict[str, Any]] = [  # noqa: RUF012 (read-only by contract)
        {"name": "target", "type": "text", "required": True},
        {"name": "kwargs", "type": "json", "schema": "object", "default": {}},
    ]

    def check_params(self, params: Mapping[str, Any]) -> list[FieldError]:
        """Refuse a target that is not of the form `package.module:function`."""
        target: str = params["target"]
        if not _TARGET.fullmatch(target):
            return [FieldError("target", f"must be 'package.module:function', got {target!r}")]
        return []

    async def run(self, ctx: ModuleContext) -> str | None:
        """Resolve the target, await it, return its result as the status message."""
        function = resolve_target(ctx.params["target"], ctx)
        kwargs: dict[str, Any] = ctx.params["kwargs"]
        try:
            inspect.signature(function).bind(ctx, **kwargs)
        except TypeError as error:
            raise ModuleError(f"{ctx.params['target']} cannot be called so: {error}") from None
        except ValueError:  # no signature to check (some builtins): let the call decide
            pass
        result = await _Paced(function(ctx, **kwargs), ctx)
        if result is None:
            return None
        text = str(result)
        return text if len(text) <= _MAX_STATUS_CHARS else text[: _MAX_STATUS_CHARS - 1] + "…"


class _Paced:
    """Awaits `awaitable`; at each of its suspensions, waits for log room (see the module
    docstring) before it resumes. Cancellation and errors reach the target as usual."""

    def __init__(self, awaitable: Awaitable[Any], ctx: ModuleContext) -> None:
        self._awaitable = awaitable
        self._ctx = ctx

    def __await__(self) -> Generator[Any, Any, Any]:
        return _paced(self._awaitable.__await__(), self._ctx)


def _paced(steps: Generator[Any, Any, Any], ctx: ModuleContext) -> Generator[Any, Any, Any]:
    """Drive the target's steps for the task awaiting it, holding it while the log is full."""
    sent: Any = None
    thrown: BaseException | None = None
    try:
        while True:
            try:
                waiting_for = steps.send(sent) if thrown is None else steps.throw(thrown)
            except StopIteration as stop:
                return stop.value
            sent, thrown = None, None
            try:
                sent = yield waiting_for
            except BaseException as error:  # a cancellation, say: the target's to handle
                thrown = error
                continue
            if ctx.log_full:
                try:
                    yield from ctx.wait_log_room().__await__()
                except BaseException as error:
                    thrown = error
    finally:
        steps.close()


def resolve_target(target: str, ctx: ModuleContext | None = None) -> Callable[..., Any]:
    """Import `"package.module:attr.path"` and return the coroutine function it names.

    Raises `ModuleError` saying which step failed. With `ctx`, the traceback of an error
    raised while importing goes to the task log, since the message alone rarely says where.
    """
    match = _TARGET.fullmatch(target)
    if match is None:
        raise ModuleError(f"target must be 'package.module:function', got {target!r}")
    module_name, attr_path = match["module"], match["attr"]
    try:
        # Imported in the event loop's thread: import-time code of asyncio libraries may
        # expect it, and a module is imported once, then cached.
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and _is_package_of(error.name, module_name):
            raise ModuleError(f"module {module_name!r} not found") from None
        _log_traceback(ctx, error)
        raise ModuleError(
            f"importing module {module_name!r} failed: ModuleNotFoundError: {error}"
        ) from None
    except Exception as error:
        _log_traceback(ctx, error)
        raise ModuleError(
            f"importing module {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ModuleError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ModuleError(f"{target} is a {type(obj).__name__}, not a coroutine function")
    if not (inspect.iscoroutinefunction(obj) or _has_async_call(obj)):
        raise ModuleError(f"{target} is not a coroutine function (define it with async def)")
    return obj  # type: ignore[no-any-return]


def _is_package_of(missing: str, module_name: str) -> bool:
    """Whether the missing module is `module_name` itself or one of its parent packages."""
    return module_name == missing or module_name.startswith(missing + ".")


def _has_async_call(obj: object) -> bool:
    # An instance whose __call__ is `async def` is awaited like a coroutine function.
    call = getattr(type(obj), "__call__", None)  # noqa: B004 (looked at, not called)
    return not inspect.isclass(obj) and inspect.iscoroutinefunction(call)


def _log_traceback(ctx: ModuleContext | None, error: BaseException) -> None:
    if ctx is not None:
        text = "".join(traceback.format_exception(error)).rstrip()
        ctx.log(LogLevel.ERROR, text)
