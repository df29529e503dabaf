"""taskd's own OpenAPI 3 document: both dialects' specs under their prefixes, plus the
routes neither covers (executions, logs, modules, health, metrics, this document).

The two specs ship inside the package (`specs/`). Their component names clash (both have
a `task`), so each spec's components get a prefix (`fylr_`, `nodeum_`) and its `$ref`s are
rewritten to match.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

from taskd import __version__

METRICS_PATH = "/metrics"  # where Prometheus scrapes by default
_SPECS = (("fylr", "/api/v1", "fylr-openapi.json"), ("nodeum", "/api/v2", "nodeum-openapi.json"))


def _load(name: str) -> dict[str, Any]:
    text = resources.files("taskd.api").joinpath("specs", name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _rewrite_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        result: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/components/"):
                _, _, section, name = value.split("/", 3)
                result[key] = f"#/components/{section}/{prefix}_{name}"
            elif key == "mapping" and isinstance(value, dict):
                result[key] = {
                    k: _rewrite_refs({"$ref": v}, prefix)["$ref"] for k, v in value.items()
                }
            else:
                result[key] = _rewrite_refs(value, prefix)
        return result
    if isinstance(node, list):
        return [_rewrite_refs(item, prefix) for item in node]
    return node


def _path_template(path: str) -> str:
    # fylr names the id `taskId`; taskd's routes call it `task_id` in both dialects.
    return path.replace("{taskId}", "{task_id}")


_ID = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_EXECUTION = {
    "type": "object",
    "properties": {
        "id": _ID,
        "task_id": _ID,
        "trigger": {
            "type": "string",
            "enum": ["schedule", "manual", "defer", "catch_up", "retry", "resume"],
        },
        "trigger_metadata": {"type": "object", "additionalProperties": True},
        "attempt": {"type": "integer"},
        "status": {
            "type": "string",
            "enum": ["queued", "running", "paused", "done", "canceled", "error", "skipped"],
        },
        "status_msg": {"type": "string"},
        "slot_at": _TIME,
        "scheduled_for": _TIME,
        "queued_at": _TIME,
        "started_at": _TIME,
        "finished_at": _TIME,
        "progress": {"type": "integer"},
        "size_todo": {"type": "integer"},
        "size_done": {"type": "integer"},
        "nodes_todo": {"type": "integer"},
        "nodes_done": {"type": "integer"},
        "bandwidth": {"type": "number"},
        "dispatcher": {"type": "string"},
        "node": {"type": "string", "description": "The cluster node that ran it."},
    },
}
_LOG_ENTRY = {
    "type": "object",
    "properties": {
        "idx": {"type": "integer"},
        "execution_id": _ID,
        "level": {"type": "string", "enum": ["debug", "info", "warning", "error"]},
        "msg": {"type": "string"},
        "status_percent": {"type": "number"},
        "timestamp": _TIME,
    },
}
_ERROR = {"$ref": "#/components/schemas/nodeum_model_error"}
_PAGING = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 1000}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
]
_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Numeric ID or name of the task.",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _not_found() -> dict[str, Any]:
    return _json(_ERROR, "Unknown id.")


_EXTRA_PATHS: dict[str, dict[str, Any]] = {
    "/api/v2/tasks/{task_id}/executions": {
        "get": {
            "summary": "Lists a task's executions, newest first.",
            "operationId": "index_task_executions",
            "description": "**API Key Scope**: tasks / show",
            "parameters": [_TASK_ID, *_PAGING],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "executions": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/taskd_execution"},
                            }
                        },
                    },
                    "Executions.",
                ),
                "404": _not_found(),
            },
        }
    },
    "/api/v2/executions/{execution_id}": {
        "get": {
            "summary": "Displays one execution.",
            "operationId": "show_execution",
            "description": "**API Key Scope**: tasks / show",
            "parameters": [
                {
                    "name": "execution_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/taskd_execution"}, "An execution."),
                "404": _not_found(),
            },
        }
    },
    "/api/v2/tasks/{task_id}/log": {
        "get": {
            "summary": "A task's log; with follow, live as server-sent events.",
            "operationId": "show_task_log",
            "description": (
                "**API Key Scope**: tasks / show\n\nWith `follow` the answer is "
                "`text/event-stream` (see `taskd_log_event`): `log` events carry one entry "
                "each (JSON; the event id is its `idx`).\n\n"
                "- `follow=execution` (or `true`): the lines of `execution_id`, or without it "
                "every line from `offset` until the task's newest execution (waited for if "
                "there is none) has ended; an `end` event closes the stream.\n"
                "- `follow=task`: every run's lines for good, from `offset` or else from the "
                "first line of the task's current execution (the running one, else the latest "
                "that was not a skipped slot); an `execution` event comes before each run's "
                "first line and an `end` event after its last. The stream ends only when the "
                "client leaves or the daemon shuts down.\n\n"
                "Both send a `: keep-alive` comment after 15 s without events, and a "
                "`shutdown` event before the daemon closes the stream."
            ),
            "parameters": [
                _TASK_ID,
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                },
                {
                    "name": "execution_id",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1},
                },
                {
                    "name": "follow",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["task", "execution", "true", "false"]},
                    "description": "`true` is `execution`, as before `task` existed.",
                },
            ],
            "responses": {
                "200": {
                    "description": "Log entries.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "entries": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/taskd_log_entry"},
                                    }
                                },
                            }
                        },
                        "text/event-stream": {
                            "schema": {"$ref": "#/components/schemas/taskd_log_event"}
                        },
                    },
                },
                "404": _not_found(),
            },
        }
    },
    "/api/v2/modules": {
        "get": {
            "summary": "Lists the task modules and their params.",
            "operationId": "index_modules",
            "description": "**API Key Scope**: tasks / index",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "modules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "description": {"$ref": "#/components/schemas/fylr_lang"},
                                        "params": {"$ref": "#/components/schemas/fylr_config_def"},
                                    },
                                },
                            }
                        },
                    },
                    "Modules.",
                )
            },
        }
    },
    "/api/v2/health": {
        "get": {
            "summary": "Liveness of the daemon. No credentials needed.",
            "operationId": "health",
            "security": [],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/taskd_health"}, "Healthy."),
                "503": _json({"$ref": "#/components/schemas/taskd_health"}, "Degraded."),
            },
        }
    },
    "/api/v2/openapi.json": {
        "get": {
            "summary": "This document.",
            "operationId": "openapi",
            "description": "Any valid credentials; no scope is needed.",
            "responses": {"200": _json({"type": "object"}, "taskd's OpenAPI document.")},
        }
    },
    METRICS_PATH: {
        "get": {
            "summary": "taskd's metrics, in the Prometheus text format.",
            "operationId": "metrics",
            "description": (
                "**API Key Scope**: metrics, or tasks / index. Served when the daemon runs "
                "(always by `taskd serve`); open on a trusted Unix socket, like every route."
            ),
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format 0.0.4.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
}
# One server-sent event of a followed log (a stream is a sequence of them, and tools such
# as schemathesis check each event against the schema of `text/event-stream`).
_LOG_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["log", "execution", "end", "shutdown"]},
        "data": {
            "type": "string",
            "description": (
                "JSON: a log entry (`log`); the execution whose lines come next, as "
                "`taskd_execution` (`execution`, with `follow=task` only, once per run before "
                "its first line); `{execution_id, status}` of a run that ended, after its last "
                "line (`end`: with `follow=execution` the last event); `{msg}` when the daemon "
                "shuts down (`shutdown`, the last event)."
            ),
        },
        "id": {"type": "string", "description": "The entry's idx (`log` events)."},
    },
}
_EXTRA_SCHEMAS = {
    "taskd_execution": _EXECUTION,
    "taskd_log_event": _LOG_EVENT,
    "taskd_log_entry": _LOG_ENTRY,
    "taskd_health": {
        "type": "object",
        "required": ["status", "version"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "version": {"type": "string"},
            "scheduler": {"type": "string"},
            "store": {"type": "string"},
            "running": {"type": "integer"},
            "queued": {"type": "integer"},
            "unrecorded": {"type": "integer"},
        },
    },
}


@functools.cache
def _base_document() -> dict[str, Any]:
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "taskd API",
            "version": __version__,
            "description": (
                "taskd speaks the fylr task API under /api/v1 and the Nodeum tasks API under "
                "/api/v2; what neither covers lives under /api/v2 in the Nodeum style."
            ),
        },
        "paths": {},
        "components": {
            "schemas": {},
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "Authorization"},
                "BearerAuth": {"type": "http", "scheme": "bearer"},
                "BasicAuth": {"type": "http", "scheme": "basic"},
            },
        },
        "security": [{"ApiKey": []}, {"BearerAuth": []}, {"BasicAuth": []}],
    }
    for prefix_name, base_path, file_name in _SPECS:
        spec = _rewrite_refs(_load(file_name), prefix_name)
        for section, entries in spec.get("components", {}).items():
            if section == "securitySchemes":
                continue
            target = document["components"].setdefault(section, {})
            for name, value in entries.items():
                target[f"{prefix_name}_{name}"] = value
        for path, operations in spec["paths"].items():
            operations = copy.deepcopy(operations)
            for operation in operations.values():
                if isinstance(operation, dict):
                    for parameter in operation.get("parameters", []):
                        if parameter.get("name") == "taskId":
                            parameter["name"] = "task_id"
            operations.pop("security", None)
            document["paths"][base_path + _path_template(path)] = operations
    # The fylr text names the singular path as well.
    document["paths"]["/api/v1/task/module"] = document["paths"]["/api/v1/task/modules"]
    document["paths"].update(copy.deepcopy(_EXTRA_PATHS))
    document["components"]["schemas"].update(copy.deepcopy(_EXTRA_SCHEMAS))
    return document


def openapi_document(*, metrics: bool = True) -> dict[str, Any]:
    """Return taskd's OpenAPI document (a fresh copy); without `/metrics` unless `metrics`
    (an app built without metrics does not serve it)."""
    document = copy.deepcopy(_base_document())
    if not metrics:
        del document["paths"][METRICS_PATH]
    return document
