"""Fuzzing with schemathesis against the document taskd serves (`/api/v2/openapi.json`).

A live app on real parts; schemathesis loads the document over HTTP and, for every
operation, sends generated requests (valid ones, and invalid ones where the operation has
something to break) with an all-scope key. Checks: every check schemathesis has, among them
no 5xx, every status, content type, header and body as the document declares them, wrong
credentials refused, methods not allowed answered 405 with Allow; and on every operation
schema-valid input accepted and schema-invalid input refused (`SEMANTIC_RULES` of
taskd/api/openapi_bodies.py names the few validity rules beyond JSON Schema: a refusal of
valid input naming only those passes). Valid requests are sometimes aimed at a task that
exists, so updates and actions get past the 404. Bounded: about 20 examples per operation
and mode; the whole test takes well under a minute.

schemathesis drives `requests` (blocking), so it runs in a worker thread while the event
loop of the test serves the app.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_fixtures import open_api
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS as REGISTERED_CHECKS
from schemathesis.checks import load_all_checks
from schemathesis.specs.openapi.checks import AcceptedNegativeData, RejectedPositiveData

from taskd.api.openapi_bodies import SEMANTIC_RULES
from taskd.modules.registry import ModuleRegistry, ParamsChecker, TaskChecker

# The schemathesis fuzz: generated requests against a live API.
pytestmark = pytest.mark.slow

EXAMPLES = 20
# In CI (`CI` set, as `.ci/run` does) the examples come from a fixed seed: a run there
# checks what was checked before it landed, and a failure can be replayed. Elsewhere each
# run draws new examples, which is how the fuzz finds what is new (it found two bugs so).
DERANDOMIZE = bool(os.environ.get("CI"))
# Every check schemathesis has (not only its defaults): status codes, content types, headers
# and bodies conform to the document, invalid data is rejected and valid data accepted,
# authentication is not ignored, methods not allowed are 405 with Allow, ...
load_all_checks()
CHECKS: list[Any] = list(REGISTERED_CHECKS.get_all())
# schema-valid input must be accepted: taskd's document describes its inputs exactly (task
# bodies per module, cron patterns, zones, filters; see taskd/api/openapi_bodies.py), so this
# check runs on every operation. The few rules no JSON Schema can express are
# `SEMANTIC_RULES` (field path, reason, why): a refusal of schema-valid input passes only
# when every field it names is refused for one of them.
SEMANTIC = [(re.compile(path), re.compile(reason)) for path, reason, _ in SEMANTIC_RULES]


def _refused_fields(response: Any) -> list[tuple[str, str]]:
    """(path, reason) of each field a 400/422 names, in either dialect's error shape."""
    try:
        body = response.json()
    except ValueError:
        return []
    if not isinstance(body, dict):
        return []
    if isinstance(body.get("details"), dict):  # v2: {"details": {path: [{reason}]}}
        return [
            (path, str(item.get("reason", "")))
            for path, items in body["details"].items()
            for item in items
        ]
    return [(str(e.get("path")), str(e.get("reason"))) for e in body.get("errors") or []]


def _exact_modules() -> frozenset[str]:
    """The built-in modules whose params the generated schema describes exactly: no rules
    across params, no secret (which may be a file reference)."""
    registry = ModuleRegistry.builtin()
    return frozenset(
        name
        for name in registry.names()
        if not isinstance(module := registry.get(name), ParamsChecker | TaskChecker)
        and not any(d.get("secret") or d["type"] == "secret" for d in module.params)
    )


EXACT_MODULES = _exact_modules()
_PARAMS_RULE = SEMANTIC_RULES.index(next(r for r in SEMANTIC_RULES if "task_params" in r[0]))


def unexplained(response: Any, case: Any) -> list[tuple[str, str]]:
    """The refused fields of `response` that no rule of `SEMANTIC_RULES` explains (all of
    them, `[("", "")]`, if it names none). A new v2 task of a module in `EXACT_MODULES`
    gets no leeway on its params."""
    rules = list(SEMANTIC)
    body = case.body if isinstance(case.body, dict) else {}
    if case.operation.label == "POST /api/v2/tasks" and body.get("task_module") in EXACT_MODULES:
        del rules[_PARAMS_RULE]
    fields = _refused_fields(response) or [("", "")]
    return [
        (field, why)
        for field, why in fields
        if not any(path.search(field) and reason.search(why) for path, reason in rules)
    ]


def positive_data_acceptance(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' check, but a 400/422 naming only semantic rules' fields passes."""
    try:
        return _positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData as rejected:
        left = unexplained(response, case)
        if response.status_code in (400, 422) and not left:
            return None
        rejected.message += f"\nRefused beyond the semantic rules: {left}"
        raise


_positive_data_acceptance = next(
    c for c in CHECKS if getattr(c, "__name__", "") == "positive_data_acceptance"
)
CHECKS = [positive_data_acceptance if c is _positive_data_acceptance else c for c in CHECKS]


def negative_data_rejection(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' check, but 413 counts as refusing an invalid body: a body beyond
    `max_body_bytes` is refused before it is read (schemathesis' list of refusals lacks 413)."""
    try:
        return _negative_data_rejection(ctx, response, case)
    except AcceptedNegativeData:
        if response.status_code == 413:
            return None
        raise


_negative_data_rejection = next(
    c for c in CHECKS if getattr(c, "__name__", "") == "negative_data_rejection"
)
CHECKS = [negative_data_rejection if c is _negative_data_rejection else c for c in CHECKS]
# Where a valid request may be aimed at the seeded task (by id, and in v2 by name too).
# Deleting it is left out, so the rest of the run still finds it.
PINS_V2 = [None, "1", "seed"]
PINS_V1 = [None, "1"]


def _can_be_invalid(operation: Any) -> bool:
    """Whether an invalid request can be made: a body, a query parameter, or a path
    parameter that is not just any string. (Asking hypothesis for invalid requests where
    there are none costs a second or more per operation before it gives up.)"""
    if operation.body:
        return True
    for parameter in operation.iter_parameters():
        location = parameter.location.value
        if location == "query":
            return True
        if location == "path" and parameter.definition.get("schema", {}).get("type") != "string":
            return True
    return False


def fuzz(base_url: str, authorization: str) -> tuple[list[str], int, int]:
    """Fuzz every operation; return the failures, how many requests were sent, and how
    many aimed at the seeded task got past its lookup (answered other than 404)."""
    schema = schemathesis.openapi.from_url(
        f"{base_url}/api/v2/openapi.json", headers={"Authorization": authorization}
    )
    headers = {"Authorization": authorization}
    failures: list[str] = []
    sent = found = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        checks = CHECKS
        modes = [schemathesis.GenerationMode.POSITIVE]
        if _can_be_invalid(operation):
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            pins: list[str | None] = [None]
            if (
                mode is schemathesis.GenerationMode.POSITIVE
                and operation.method != "delete"
                and "{task_id}" in operation.path
            ):
                pins = PINS_V1 if operation.path.startswith("/api/v1/") else PINS_V2

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=DERANDOMIZE,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode), pin=st.sampled_from(pins))
            def check(case: Any, pin: str | None) -> None:
                nonlocal sent, found
                if pin is not None:
                    case.path_parameters["task_id"] = pin
                if isinstance(case.query, dict) and case.query.get("follow") == "task":
                    # A followed task's stream never ends by itself, and schemathesis reads
                    # an answer to its end (test_api_extras follows tasks).
                    case.query["follow"] = "execution"
                sent += 1
                # `check` runs within this iteration: the loop variable is the right one.
                response = case.call_and_validate(
                    base_url=base_url,
                    headers=headers,
                    checks=checks,  # noqa: B023
                )
                found += pin is not None and response.status_code != 404

            try:
                check()
            except Unsatisfiable:
                continue  # nothing of this operation could be made invalid after all
            except (Exception, BaseExceptionGroup) as error:  # schemathesis' FailureGroup
                failures.append(f"{operation.label} ({mode.value}): {error}")
    return failures, sent, found


# About 20 s alone; the timeout only detects a hang, with room for a machine busy with
# other test runs (the suite's 60 s default was hit under four parallel runs).
@pytest.mark.timeout(180)
async def test_schemathesis_finds_no_server_error_and_no_nonconforming_answer(
    tmp_path: Path,
) -> None:
    """Generated requests to every operation of openapi.json: no 5xx, every answer
    conforms to the document, and no request failed inside taskd."""
    # schemathesis' ignored_auth check sends wrong credentials to every operation and wants
    # 401: the limit of failed logins per address (its own tests: test_api_pressure.py)
    # would answer 429 to the rest, so it is off here.
    async with open_api(tmp_path, api_options={"auth_failures_per_minute": 0}) as api:
        seed = await api.create("seed", comment="fuzz target")
        assert seed["id"] == "1"
        run = await api.unix.put("/api/v2/tasks/1/action/run")
        await api.wait_execution(run.json["execution_id"], "done")
        authorization = f"Bearer {api.keys['all']}"
        failures, sent, found = await asyncio.to_thread(fuzz, api.tcp_base, authorization)
        # What failed inside taskd (its log's tracebacks) says more than schemathesis' 500.
        assert failures == [], "\n\n".join(failures + [str(f) for f in api.failures()])
        assert sent > 25 * EXAMPLES, "every operation was fuzzed"
        assert found > 2 * EXAMPLES, "requests aimed at the seeded task reached it"
        assert api.failures() == []
