"""The `files` module's parameters and settings: what a task asks for, checked and resolved.

The params say what to move where (`sources`, `destination`, `action`); Nodeum's task
`options` say how (`conflict_resolution`, `file_checksum`, ...; validated by the task
validator, see `taskd.model.FILE_OPTIONS`). `Settings.resolve` merges both, with the
defaults below, into what one execution acts on.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskd.errors import FieldError

__all__ = [
    "ACTIONS",
    "DEFAULT_OPTIONS",
    "LOCATION_TYPES",
    "PARAMS",
    "Settings",
    "check_params",
    "check_task",
    "destination_paths",
]

ACTIONS = ("copy", "move", "erase", "scan", "check_consistency", "duplication")
# The kinds of place a source or a destination may be; the v2 `sources.type` and
# `destinations.type` filters match them.
LOCATION_TYPES = ("local",)
# The actions that write somewhere, and so need a destination.
_WRITING = frozenset({"copy", "move", "check_consistency", "duplication"})

PARAMS: list[dict[str, Any]] = [
    {"name": "sources", "type": "json", "schema": "array", "required": True},
    # An object; for `duplication` a list of them.
    {"name": "destination", "type": "json"},
    # Default: the task's `workflow_action`.
    {"name": "action", "type": "select", "options": list(ACTIONS)},
]

# What an option not set on the task means. `rename` never loses data; recursion and the
# source's dates are what a copy of a folder is expected to keep.
DEFAULT_OPTIONS: Mapping[str, Any] = {
    "conflict_resolution": "rename",
    "file_checksum": None,
    "processing_order": "asc",
    "recursive": True,
    "ignore_hidden": False,
    "reset_file_date": False,
    "reset_folder_date": False,
    "keep_file_ownership": False,
    "soft_erase": False,
    "remove_root_folder": False,
    "parallel": 1,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What one execution does: the action, its places, and the options in effect."""

    action: str
    sources: tuple[str, ...]  # absolute paths, globs allowed
    destinations: tuple[str, ...]  # absolute folders; one but for `duplication`
    conflict_resolution: str
    file_checksum: str | None
    processing_order: str
    recursive: bool
    ignore_hidden: bool
    reset_file_date: bool
    reset_folder_date: bool
    keep_file_ownership: bool
    soft_erase: bool
    remove_root_folder: bool
    parallel: int

    @classmethod
    def resolve(
        cls,
        params: Mapping[str, Any],
        workflow_action: str | None,
        task_options: Mapping[str, Any],
    ) -> Settings:
        """The settings of validated `params` within a task; ValueError if the action is
        unknown (a definition that passed `check_task` always has one)."""
        action = params["action"] or workflow_action
        if action not in ACTIONS:
            raise ValueError(f"no action: set task_params.action or workflow_action ({action!r})")
        options = {key: task_options.get(key, default) for key, default in DEFAULT_OPTIONS.items()}
        return cls(
            action=action,
            sources=tuple(source["path"] for source in params["sources"]),
            destinations=tuple(destination_paths(params["destination"])),
            conflict_resolution=options["conflict_resolution"],
            file_checksum=options["file_checksum"],
            processing_order=options["processing_order"],
            recursive=bool(options["recursive"]),
            ignore_hidden=bool(options["ignore_hidden"]),
            reset_file_date=bool(options["reset_file_date"]),
            reset_folder_date=bool(options["reset_folder_date"]),
            keep_file_ownership=bool(options["keep_file_ownership"]),
            soft_erase=bool(options["soft_erase"]),
            remove_root_folder=bool(options["remove_root_folder"]),
            parallel=int(options["parallel"]),
        )

    def fingerprint(self) -> dict[str, Any]:
        """What saved state belongs to: a resumed run uses it only for the same work."""
        return {
            "action": self.action,
            "sources": list(self.sources),
            "destinations": list(self.destinations),
            "order": self.processing_order,
            "remove_root_folder": self.remove_root_folder,
        }


def destination_paths(value: Any) -> list[str]:
    """The folder paths of a validated `destination` param (none, one, or a list)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [item["path"] for item in items]


def check_params(params: Mapping[str, Any]) -> list[FieldError]:
    """Each source and destination a `{"type": "local", "path": ABSOLUTE}` object; a
    destination neither inside a source nor a glob."""
    errors: list[FieldError] = []
    sources = params["sources"]
    if not sources:
        errors.append(FieldError("sources", "must name at least one source"))
    for index, item in enumerate(sources):
        errors += _location(item, f"sources[{index}]", allow_glob=True)
    destination = params["destination"]
    if isinstance(destination, list):
        if not destination:
            errors.append(FieldError("destination", "must name at least one folder"))
        for index, item in enumerate(destination):
            errors += _location(item, f"destination[{index}]", allow_glob=False)
    elif destination is not None:
        errors += _location(destination, "destination", allow_glob=False)
    if errors:
        return errors
    for dest_index, dest in enumerate(destination_paths(destination)):
        for index, item in enumerate(sources):
            if _inside(dest, item["path"]):
                where = "destination" if not isinstance(destination, list) else None
                errors.append(
                    FieldError(
                        where or f"destination[{dest_index}]",
                        f"{dest} is inside the source {item['path']} (sources[{index}])",
                    )
                )
    return errors


def check_task(params: Mapping[str, Any], task: Mapping[str, Any]) -> list[FieldError]:
    """The action (given, or the task's `workflow_action`) is one this module performs, and
    has the destination it needs: one folder, or a list of them for `duplication`."""
    workflow_action = task.get("workflow_action")
    action = params["action"] or workflow_action
    if action is None:
        return [
            FieldError(
                "task_params.action",
                f"is required when the task has no workflow_action: one of {', '.join(ACTIONS)}",
            )
        ]
    if action not in ACTIONS:
        return [
            FieldError(
                "workflow_action",
                f"the files module cannot {action!r}: set task_params.action, or a"
                f" workflow_action of {', '.join(ACTIONS)}",
            )
        ]
    destination = params["destination"]
    if action in _WRITING and destination is None:
        return [FieldError("task_params.destination", f"is required for {action}")]
    if action == "duplication" and not isinstance(destination, list):
        return [FieldError("task_params.destination", "must be a list of folders for duplication")]
    if action != "duplication" and isinstance(destination, list):
        return [
            FieldError("task_params.destination", f"must be one folder for {action}, not a list")
        ]
    return []


def _location(item: Any, path: str, *, allow_glob: bool) -> list[FieldError]:
    if not isinstance(item, Mapping):
        return [FieldError(path, 'must be an object such as {"type": "local", "path": "/data"}')]
    errors = [
        FieldError(f"{path}.{key}", "is not a known field (type, path)")
        for key in item
        if key not in ("type", "path")
    ]
    kind = item.get("type")
    if kind not in LOCATION_TYPES:
        errors.append(
            FieldError(f"{path}.type", f"must be one of {', '.join(LOCATION_TYPES)}, got {kind!r}")
        )
    where = item.get("path")
    if not isinstance(where, str) or not where:
        errors.append(FieldError(f"{path}.path", "must be an absolute path"))
    elif "\0" in where:
        errors.append(FieldError(f"{path}.path", "must not contain a NUL character"))
    elif not os.path.isabs(where):
        errors.append(FieldError(f"{path}.path", f"must be an absolute path, got {where!r}"))
    elif os.path.normpath(where) == "/":
        errors.append(FieldError(f"{path}.path", "must not be the root folder /"))
    elif not allow_glob and glob.has_magic(where):
        errors.append(FieldError(f"{path}.path", "must be a folder, not a pattern"))
    elif ".taskd-trash" in where.split("/"):
        errors.append(FieldError(f"{path}.path", "must not be in a .taskd-trash folder"))
    return errors


def _inside(path: str, source: str) -> bool:
    """Whether `path` is `source` or below it, textually; a pattern is judged at run time,
    on what it matches (with symlinks resolved)."""
    if glob.has_magic(source):
        return False
    source, path = os.path.normpath(source), os.path.normpath(path)
    return path == source or path.startswith(source + "/")
