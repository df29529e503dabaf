"""The module registry: which modules exist, what they take, and validating a task against one.

Built-in modules come from `ModuleRegistry.builtin()`; third-party modules are added with
`load_entry_points()` from the entry-point group `taskd.modules`. An entry point may name a
`Module` instance, a class to instantiate without arguments, or a zero-argument factory; the
module it yields must carry the entry point's name, so the names the command line knows
without importing anything (`taskd check-config`) are the names the daemon runs.

A module may also define `check_params(params) -> list[FieldError]` (see `ParamsChecker`):
rules across parameters that the per-parameter definitions cannot express ("exactly one of
`argv` and `command`"). It gets the typed params with defaults filled in; the paths of its
errors are relative to the params object (`""` for the object as a whole).

A module may also define `check_task(params, task) -> list[FieldError]` (see `TaskChecker`):
rules between its params and the rest of the definition (the `files` module's `action`
defaults to the task's `workflow_action`). `task` is the definition's stored JSON form; the
paths of its errors are relative to the definition. It runs when `validate` is given the
definition (the core does so at every write and at config load).
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

import structlog

from taskd.errors import FieldError, NotFoundError, ValidationError, join_path
from taskd.modules.base import Module
from taskd.modules.params import (
    SecretFiles,
    load_secret_files_async,
    read_secret_files,
    secret_file_paths,
    secret_values,
    validate_param_defs,
    validate_params,
)
from taskd.validate import did_you_mean, unknown_name_reason

__all__ = ["ENTRY_POINT_GROUP", "ModuleProblem", "ModuleRegistry", "ParamsChecker", "TaskChecker"]

ENTRY_POINT_GROUP = "taskd.modules"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

_log = structlog.get_logger(__name__)


@runtime_checkable
class ParamsChecker(Protocol):
    """The optional hook of a module with rules across its parameters."""

    def check_params(self, params: Mapping[str, Any]) -> list[FieldError]:
        """Return the problems of `params` (typed, defaults filled in); empty when fine."""
        ...


@runtime_checkable
class TaskChecker(Protocol):
    """The optional hook of a module whose params depend on the rest of the definition."""

    def check_task(self, params: Mapping[str, Any], task: Mapping[str, Any]) -> list[FieldError]:
        """Return the problems of `params` (typed, defaults filled in) within `task` (the
        definition's JSON form); paths relative to the definition; empty when fine."""
        ...


@dataclass(frozen=True, slots=True)
class ModuleProblem:
    """A third-party module that was skipped, and why."""

    entry_point: str  # the entry point's name
    target: str  # what it points at, `package.module:attr`
    reason: str

    def __str__(self) -> str:
        return f"module {self.entry_point!r} ({self.target}) skipped: {self.reason}"


class ModuleRegistry:
    """Modules by name. Built once at start-up, then only read."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        """Register `modules`; raise `ValueError` if one is malformed or a name repeats."""
        self._modules: dict[str, Module] = {}
        self._checkers: dict[str, ParamsChecker] = {}
        self._task_checkers: dict[str, TaskChecker] = {}
        self._problems: list[ModuleProblem] = []
        for module in modules:
            self.register(module)

    @classmethod
    def builtin(cls) -> ModuleRegistry:
        """A registry holding the built-in modules: `shell`, `http`, `sleep`, `python`,
        `files`."""
        # Imported here: the built-ins pull in aiohttp and friends, which a registry built
        # from other modules (tests, tools) does not need.
        from taskd.modules.files import FilesModule
        from taskd.modules.http import HttpModule
        from taskd.modules.python import PythonModule
        from taskd.modules.shell import ShellModule
        from taskd.modules.sleep import SleepModule

        return cls([ShellModule(), HttpModule(), SleepModule(), PythonModule(), FilesModule()])

    def register(self, module: Module) -> None:
        """Add `module`; raise `ValueError` if it is malformed or its name is taken."""
        reason = _module_problem(module)
        if reason is not None:
            raise ValueError(reason)
        if module.name in self._modules:
            raise ValueError(f"a module named {module.name!r} is already registered")
        self._modules[module.name] = module
        # Decided once: a runtime Protocol check costs microseconds on every call.
        if isinstance(module, ParamsChecker):
            self._checkers[module.name] = module
        if isinstance(module, TaskChecker):
            self._task_checkers[module.name] = module

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register the modules of the entry-point group `group`; return the names added.

        A module that cannot be imported, built or used is skipped: the reason is logged
        as a warning and kept in `problems()`. Nothing it does at import time (short of
        KeyboardInterrupt) reaches the caller, so one broken plug-in cannot stop the daemon.
        """
        added: list[str] = []
        for entry_point in entry_points(group=group):
            try:
                module = _load(entry_point)
                self.register(module)
            except _Unusable as unusable:
                reason = str(unusable)
            except ValueError as error:  # from register: malformed or a name already taken
                reason = str(error)
            else:
                added.append(module.name)
                continue
            problem = ModuleProblem(entry_point.name, entry_point.value, reason)
            self._problems.append(problem)
            _log.warning(
                "module_skipped",
                entry_point=problem.entry_point,
                target=problem.target,
                reason=problem.reason,
            )
        return added

    def problems(self) -> list[ModuleProblem]:
        """The third-party modules skipped so far, in the order they were met."""
        return list(self._problems)

    def get(self, name: str) -> Module:
        """Return the module called `name`; raise `NotFoundError` naming the known ones."""
        try:
            return self._modules[name]
        except KeyError:
            hint = did_you_mean(name, self._modules)
            raise NotFoundError(
                f"no module named {name!r}; known modules: {self._known()}{hint}"
            ) from None

    def checks_task(self, name: str) -> bool:
        """Whether the module `name` has a `check_task` hook (so `validate` wants `task`;
        callers build the definition's JSON only then)."""
        return name in self._task_checkers

    def names(self) -> list[str]:
        """The names of the registered modules, sorted."""
        return sorted(self._modules)

    def describe(self) -> list[dict[str, Any]]:
        """One `{"name", "description", "params"}` dict per module, sorted by name.

        Copies: the caller may change them (render, translate) without touching the modules.
        """
        return [
            {
                "name": module.name,
                "description": dict(module.description),
                "params": copy.deepcopy(module.params),
            }
            for module in (self._modules[name] for name in self.names())
        ]

    def validate(
        self,
        module_name: object,
        raw_params: object,
        *,
        path: str = "task_params",
        module_path: str = "task_module",
        files: SecretFiles | None = None,
        task: Mapping[str, Any] | None = None,
        task_path: str = "",
    ) -> dict[str, Any]:
        """Check `raw_params` for the module `module_name`; return them with defaults filled in.

        Raises `ValidationError`: at `module_path` for an unknown module; at or below `path`
        for params that the module's definitions or its `check_params` refuse; below
        `task_path` for what its `check_task` refuses, when `task` (the definition's JSON
        form) is given.

        Secret values named as files (`{"file": path}`) are taken from `files` (read before,
        off the loop: `read_files`); without `files` they are read here, which blocks: on
        the event loop, pass what `read_files` read.
        """
        if not isinstance(module_name, str):
            raise ValidationError.single(module_path, "must be the name of a module")
        module = self._modules.get(module_name)
        if module is None:
            raise ValidationError.single(
                module_path, unknown_name_reason("module", module_name, self.names())
            )
        raw_params = read_secret_files(module.params, raw_params, path=path, files=files)
        params = validate_params(module.params, raw_params, path=path)
        checker = self._checkers.get(module_name)
        if checker is not None:
            errors = checker.check_params(params)
            if errors:
                raise ValidationError(
                    [FieldError(join_path(path, error.path), error.reason) for error in errors]
                )
        task_checker = self._task_checkers.get(module_name)
        if task is not None and task_checker is not None:
            errors = task_checker.check_task(params, task)
            if errors:
                raise ValidationError(
                    [FieldError(join_path(task_path, error.path), error.reason) for error in errors]
                )
        return params

    def secret_values(self, module_name: str, params: Mapping[str, Any]) -> tuple[str, ...]:
        """The secret strings in a task's params (see `params.secret_values`): what must
        not show in its log, its status message or a run's metadata. None for an unknown
        module."""
        module = self._modules.get(module_name)
        return () if module is None else secret_values(module.params, params)

    def secret_files(self, module_name: object, raw_params: object) -> list[str]:
        """The files `raw_params` name for the module's secret values (none for an unknown
        module, which `validate` reports). Pure and cheap: nothing is read."""
        module = self._modules.get(module_name) if isinstance(module_name, str) else None
        return [] if module is None else secret_file_paths(module.params, raw_params)

    async def read_files(self, module_name: object, raw_params: object) -> SecretFiles | None:
        """The secret files `raw_params` name for the module, read in a thread (bounded:
        see `load_secret_files_async`); None if they name none."""
        paths = self.secret_files(module_name, raw_params)
        return await load_secret_files_async(paths) if paths else None

    def _known(self) -> str:
        return ", ".join(self.names()) or "none"


class _Unusable(Exception):
    """An entry point that yields no usable module; the message says why."""


def _load(entry_point: EntryPoint) -> Module:
    """Import an entry point and turn what it names into a module.

    Raises `_Unusable` for every failure, including whatever the plug-in's own code raises
    while being imported or built (SystemExit too: a plug-in must not end the daemon).
    """
    try:
        target = entry_point.load()
    except (Exception, SystemExit) as error:
        raise _Unusable(f"import failed: {_name_error(error)}") from error
    if isinstance(target, Module) and not inspect.isclass(target):
        module: object = target
    elif callable(target):
        made_by = "class" if inspect.isclass(target) else "factory"
        try:
            module = target()
        except (Exception, SystemExit) as error:
            raise _Unusable(f"calling its {made_by} failed: {_name_error(error)}") from error
    else:
        raise _Unusable(f"names a {type(target).__name__}, not a module, class or factory")
    if isinstance(module, Module) and module.name != entry_point.name:
        raise _Unusable(
            f"the module is named {module.name!r}; it must be named like its entry point"
        )
    return module  # type: ignore[return-value]  # register() checks it


def _module_problem(module: object) -> str | None:
    """Why `module` cannot be used, or None if it can."""
    if not isinstance(module, Module):
        return f"a {type(module).__name__} is not a module (name, description, params, run)"
    if not isinstance(module.name, str) or not _NAME.fullmatch(module.name):
        return f"module name {module.name!r} must be letters, digits, '_', '.' or '-'"
    description = module.description
    if not isinstance(description, Mapping) or not all(
        isinstance(key, str) and isinstance(text, str) for key, text in description.items()
    ):
        return f"module {module.name!r}: description must map languages to texts"
    if not inspect.iscoroutinefunction(module.run):
        return f"module {module.name!r}: run must be a coroutine function (async def)"
    try:
        validate_param_defs(module.params)
    except ValidationError as error:
        return f"module {module.name!r}: {error}"
    return None


def _name_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
