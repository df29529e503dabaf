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
from taskd.api.openapi_bodies import ModuleInfo, input_schemas, list_filter_parameters
from taskd.model import TASK_QUERY_FIELDS
from taskd.modules.registry import ModuleRegistry, ParamsChecker, TaskChecker

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
    {
        "name": "offset",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": 10**9},
    },
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
                {
                    "name": "offset",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 10**9},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                },
                {
                    "name": "execution_id",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10**9},
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
    "/api/v2/tasks/{task_id}/next_runs": {
        "get": {
            "summary": "A task's next fire times, with the slots DST moved or doubled marked.",
            "operationId": "task_next_runs",
            "description": (
                "**API Key Scope**: tasks / show\n\nFrom the task's schedules (its one-shot "
                "`next_run_at` aside), strictly after `after` (default: now). Schedules "
                "without a zone, and intervals' local times, are read in the daemon's "
                "`timezone`."
            ),
            "parameters": [
                _TASK_ID,
                {
                    "name": "count",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                },
                {"name": "after", "in": "query", "schema": _TIME},
            ],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/taskd_next_runs"}, "Fire times."),
                "404": _not_found(),
            },
        }
    },
    "/api/v2/schedules/preview": {
        "post": {
            "summary": "The next fire times of schedules given in the body.",
            "operationId": "preview_schedules",
            "description": (
                "**API Key Scope**: tasks / show\n\nThe schedules are checked by the tasks' "
                "own validator: invalid ones are a 422 naming each field "
                "(`schedules[0].hours[1]`)."
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/taskd_preview_request"}
                    }
                },
            },
            "responses": {
                "200": _json({"$ref": "#/components/schemas/taskd_next_runs"}, "Fire times."),
                "422": _json(_ERROR, "Invalid schedules, count, after or timezone."),
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
    "/api/v2/whoami": {
        "get": {
            "summary": "Who the credentials name and what they may do.",
            "operationId": "whoami",
            "description": (
                "Any valid credentials; no scope is needed. `allowed` spells out the "
                "wildcards of `scopes` (`tasks/*`, `*`). Over a trusted Unix socket the name "
                "is `unix-socket`, with every scope."
            ),
            "responses": {
                "200": _json({"$ref": "#/components/schemas/taskd_whoami"}, "The caller."),
                "401": _json(_ERROR, "No valid credentials."),
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
_NEXT_RUNS = {
    "type": "object",
    "required": ["next_runs"],
    "properties": {
        "next_runs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["at", "local", "schedule", "dst"],
                "properties": {
                    "at": {**_TIME, "description": "The instant, UTC."},
                    "local": {
                        "type": "string",
                        "description": "The local time with its offset, in the schedule's "
                        "zone (an interval's: the preview's `timezone`).",
                    },
                    "schedule": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Index of the schedule that fires (the first, when "
                        "several fire at the same instant).",
                    },
                    "dst": {
                        "type": "string",
                        "nullable": True,
                        "enum": ["gap_shifted", "fold_first", "fold_second", None],
                        "description": "`gap_shifted`: the slot's wall time was skipped "
                        "(spring forward) and it fires at the end of the gap; `fold_first` / "
                        "`fold_second`: its wall time occurs twice (fall back), this is the "
                        "first / second occurrence; null: DST did not touch it.",
                    },
                },
            },
        }
    },
}
# taskd's v1 error object (fylr's spec declares no error responses).
_V1_ERROR = {
    "type": "object",
    "required": ["code", "statuscode", "description"],
    "properties": {
        "code": {"type": "string", "description": "`error.api.<code word>`"},
        "statuscode": {"type": "integer"},
        "description": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "reason"],
                "properties": {"path": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
}
_EXTRA_SCHEMAS = {
    "taskd_whoami": {
        "type": "object",
        "required": ["name", "scopes", "allowed"],
        "properties": {
            "name": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "allowed": {"type": "array", "items": {"type": "string"}},
        },
    },
    "taskd_v1_error": _V1_ERROR,
    "taskd_next_runs": _NEXT_RUNS,
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


# -- every error status each route can answer --------------------------------------------

_MODEL_ERROR_REF = "#/components/schemas/nodeum_model_error"
_DATA_MANAGEMENT_REF = "#/components/schemas/nodeum_data_management_error"
_V1_ERROR_REF = "#/components/schemas/taskd_v1_error"
_ERROR_TEXT = {
    400: "Malformed JSON or query values (the parameter is named).",
    401: "No credentials, or credentials that are not valid (the body says which; a refused "
    "JWT says why).",
    403: "The credentials lack the route's scope (or `all=true` without `admin`).",
    404: "No such task or execution, or another owner's (not disclosed to a non-admin).",
    408: "The request body did not arrive within `request_timeout_sec`.",
    409: "A conflict: a name taken, a version mismatch, a config task, an action that cannot "
    "apply now.",
    413: "The body is larger than `max_body_bytes`.",
    422: "Invalid input; `details` names each field.",
    429: "Too many failed logins from this address (Retry-After).",
    503: "Busy (`max_in_flight` requests already) or the store is unavailable (Retry-After).",
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}
_AUTHENTICATE = {"WWW-Authenticate": {"schema": {"type": "string"}}}
# Routes answering `data_management_error` (Nodeum's shape of a refused action) as well as
# `model_error`: status -> whether only data_management_error comes.
_ACTION_REFUSALS = {409: False}
_RUN_DEFER_REFUSALS = {404: True, 409: True}


# Routes any valid credentials may call (no scope, so never 403).
_ANY_CREDENTIALS = frozenset({"/api/v2/openapi.json", "/api/v2/whoami"})


def _error_statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses `method path` can answer (500 aside: that is a bug)."""
    if operation.get("security") == []:  # health: no credentials, no in-flight cap
        return set()
    statuses = {401, 429, 503}
    if path not in _ANY_CREDENTIALS:
        statuses.add(403)
    query = [p for p in operation.get("parameters", []) if _param_in(p) == "query"]
    body = "requestBody" in operation
    if query or body:
        statuses.add(400)
    if "{" in path:
        statuses.add(404)
    if body:
        statuses |= {408, 413}
        if path.startswith("/api/v2/"):
            statuses.add(422)
    if method in {"post", "put", "delete"} and path != "/api/v2/schedules/preview":
        statuses.add(409)
    if path.endswith("/action/run_defer"):
        statuses |= {400, 404, 409}
    return statuses


def _param_in(parameter: dict[str, Any]) -> str:
    ref = parameter.get("$ref", "")
    if ref.startswith("#/components/parameters/nodeum_"):
        return "query"  # every shared Nodeum parameter is a query parameter
    return str(parameter.get("in", ""))


def _error_schema(path: str, status: int) -> dict[str, Any]:
    if path.startswith("/api/v1/"):
        return {"$ref": _V1_ERROR_REF}
    refusals = (
        _RUN_DEFER_REFUSALS
        if path.endswith("/action/run_defer")
        else _ACTION_REFUSALS
        if "/action/" in path
        else {}
    )
    if status not in refusals:
        return {"$ref": _MODEL_ERROR_REF}
    if refusals[status]:
        return {"$ref": _DATA_MANAGEMENT_REF}
    return {"anyOf": [{"$ref": _MODEL_ERROR_REF}, {"$ref": _DATA_MANAGEMENT_REF}]}


def _declare_errors(document: dict[str, Any]) -> None:
    """Declare, on every operation, each error status it can answer with its body's schema
    (the dialect's error shape) and headers; a status a spec declares already keeps its
    description, and gets the body it lacked."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status in sorted(_error_statuses(path, method, operation)):
                declared = responses.get(str(status))
                if declared is not None and ("$ref" in declared or "content" in declared):
                    continue
                response = _json(_error_schema(path, status), _ERROR_TEXT[status])
                if declared is not None:
                    response["description"] = declared.get("description", _ERROR_TEXT[status])
                if status in {429, 503}:
                    response["headers"] = copy.deepcopy(_RETRY_AFTER)
                elif status == 401:
                    response["headers"] = copy.deepcopy(_AUTHENTICATE)
                responses[str(status)] = response


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
                "JWT": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": (
                        "A JSON Web Token of an issuer named in [[api.jwt]]: HS256, RS256 or "
                        "ES256 as the issuer's key says; `exp`, `iss`, `aud`, `sub` required; "
                        "`sub` is the principal, the `scope` claim (space-separated) its "
                        "scopes within the issuer's. A refused token is 401 saying why."
                    ),
                },
            },
        },
        "security": [{"ApiKey": []}, {"BearerAuth": []}, {"BasicAuth": []}, {"JWT": []}],
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
    _describe_taskd_additions(document)
    _declare_errors(document)
    return document


def _describe_taskd_additions(document: dict[str, Any]) -> None:
    """What taskd adds to the specs' own operations: v1's paging and `all`, the owner
    rules of both lists, the JWT scheme."""
    v1_list = document["paths"]["/api/v1/task"]["get"]
    v1_list["parameters"] = [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "maximum": 100000},
        },
        {
            "name": "offset",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "maximum": 10**9},
        },
        {
            "name": "all",
            "in": "query",
            "schema": {"type": "boolean"},
            "description": "For admins only (scope admin): every owner's tasks.",
        },
    ]
    # fylr types the log's offset and limit as numbers; taskd reads integers (and 400s
    # anything else), within these bounds.
    for parameter in document["paths"]["/api/v1/task/{task_id}/log"]["get"]["parameters"]:
        if parameter["name"] == "offset":
            parameter["schema"] = {"type": "integer", "minimum": 0, "maximum": 10**9}
        elif parameter["name"] == "limit":
            parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": 10000}
    # Nodeum leaves `defer_id` optional; without one there is nothing to start (400).
    defer_id = document["components"]["parameters"]["nodeum_task_defer_id"]
    defer_id["required"] = True
    defer_id["schema"] = {**defer_id.get("schema", {"type": "string"}), "minLength": 1}
    _describe_task_superset(document["components"]["schemas"])
    # A run's trigger metadata: taskd reads a JSON null (or no body) as none.
    metadata = document["components"]["requestBodies"]["nodeum_task_trigger_metadata"]
    metadata["content"]["application/json"]["schema"]["nullable"] = True
    owners = (
        "\n\nThe caller's own tasks and the config tasks; with `all=true` (scope `admin` only: "
        "403 otherwise) every owner's."
    )
    for path in ("/api/v1/task", "/api/v2/tasks"):
        operation = document["paths"][path]["get"]
        operation["description"] = operation.get("description", "") + owners


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _describe_inputs(document: dict[str, Any], modules: list[ModuleInfo]) -> None:
    """The exact inputs (see `openapi_bodies`): task bodies with one variant per module,
    schedules, the preview request, the v2 list filters."""
    schemas = document["components"]["schemas"]
    schemas.update(input_schemas(modules))
    paths = document["paths"]
    ref = "#/components/schemas/"
    paths["/api/v2/tasks"]["post"]["requestBody"] = _json_body(
        {"$ref": ref + "taskd_task_v2_create"}
    )
    paths["/api/v2/tasks/{task_id}"]["put"]["requestBody"] = _json_body(
        {"$ref": ref + "taskd_task_v2_update"}
    )
    paths["/api/v1/task"]["post"]["requestBody"] = _json_body(
        {"type": "array", "items": {"$ref": ref + "taskd_task_v1_item"}}
    )
    exact = list_filter_parameters(TASK_QUERY_FIELDS - {"sources.type", "destinations.type"})
    components = document["components"]["parameters"]
    listing = paths["/api/v2/tasks"]["get"]
    parameters = []
    for parameter in listing["parameters"]:
        resolved = (
            components[parameter["$ref"].rsplit("/", 1)[1]] if "$ref" in parameter else parameter
        )
        if resolved["name"] in exact:
            parameter = {
                "name": resolved["name"],
                "in": "query",
                "description": resolved.get("description", ""),
                "schema": exact[resolved["name"]],
            }
        parameters.append(parameter)
    listing["parameters"] = parameters


def _module_infos(registry: ModuleRegistry) -> list[ModuleInfo]:
    """Each module's name, param definitions, and the docstrings of its rules beyond them."""
    infos: list[ModuleInfo] = []
    for name in registry.names():
        module = registry.get(name)
        rules = [
            " ".join((hook.__doc__ or "").split())
            for hook, kind in (
                (getattr(module, "check_params", None), ParamsChecker),
                (getattr(module, "check_task", None), TaskChecker),
            )
            if hook is not None and isinstance(module, kind)
        ]
        infos.append((name, copy.deepcopy(module.params), " ".join(rules) or None))
    return infos


_ANY_OBJECT = {"type": "object", "additionalProperties": True}
# The fields taskd shows in a task of either dialect beyond its spec (render.SPEC_FIELDS and
# the live fields): the definition, the owner, the version, where it comes from.
_TASK_SUPERSET = {
    "task_module": {"type": "string"},
    "task_params": {**_ANY_OBJECT, "description": "Secret values show as `***`."},
    "task_timeout_sec": {"type": "integer"},
    "schedules": {"type": "array", "items": _ANY_OBJECT},
    "email": _ANY_OBJECT,
    "frontend_prefs": _ANY_OBJECT,
    "metadata": _ANY_OBJECT,
    "enabled": {"type": "boolean"},
    "next_run_at": _TIME,
    "status_msg": {"type": "string"},
    "status_percent": {"type": "number"},
    "run_started_at": _TIME,
    "run_finished_at": _TIME,
    "run_canceled_at": _TIME,
    "state": {**_ANY_OBJECT, "description": "The module's resumable state (`files`)."},
    "version": {"type": "integer"},
    "created_at": _TIME,
    "updated_at": _TIME,
    "created_by": {"type": "string", "description": "The principal that created the task."},
    "updated_by": {"type": "string", "description": "The principal that changed it last."},
    "source": {"type": "string", "description": "`api`, or the config file it comes from."},
    "retired": {"type": "boolean"},
    "retired_at": _TIME,
}
_OPTIONS_SUPERSET = {
    "overlap": {"type": "string"},
    "catch_up": {"type": "string"},
    "max_retries": {"type": "integer"},
    "retry_delay_sec": {"type": "number"},
}


def _describe_task_superset(schemas: dict[str, Any]) -> None:
    """Add what taskd shows of a task beyond each spec's `task` (a spec's own field stays)."""
    for properties, extra in (
        (schemas["nodeum_task"]["properties"], _TASK_SUPERSET),
        (schemas["fylr_task"]["properties"]["task"]["properties"], _TASK_SUPERSET),
        (schemas["nodeum_task_options"]["properties"], _OPTIONS_SUPERSET),
    ):
        for name, schema in extra.items():
            properties.setdefault(name, copy.deepcopy(schema))


@functools.lru_cache(maxsize=4)
def _document(metrics: bool, modules_key: str) -> dict[str, Any]:
    document = copy.deepcopy(_base_document())
    if not metrics:
        del document["paths"][METRICS_PATH]
    modules: list[ModuleInfo] = [tuple(item) for item in json.loads(modules_key)]
    _describe_inputs(document, modules)
    return document


def openapi_document(
    *, metrics: bool = True, modules: ModuleRegistry | None = None
) -> dict[str, Any]:
    """Return taskd's OpenAPI document (a fresh copy); without `/metrics` unless `metrics`
    (an app built without metrics does not serve it). Task bodies have one variant per
    module of `modules` (default: the built-in modules)."""
    registry = modules if modules is not None else _builtin()
    key = json.dumps(_module_infos(registry), sort_keys=True, default=str)
    return copy.deepcopy(_document(metrics, key))


def openapi_text(*, metrics: bool = True, modules: ModuleRegistry | None = None) -> str:
    """`openapi_document` as JSON text, serialized once per (metrics, modules): serving it
    costs no copy and no encoding of its ~200 KB on the event loop."""
    registry = modules if modules is not None else _builtin()
    key = json.dumps(_module_infos(registry), sort_keys=True, default=str)
    return _text(metrics, key)


@functools.lru_cache(maxsize=4)
def _text(metrics: bool, modules_key: str) -> str:
    return json.dumps(_document(metrics, modules_key))


@functools.cache
def _builtin() -> ModuleRegistry:
    return ModuleRegistry.builtin()
