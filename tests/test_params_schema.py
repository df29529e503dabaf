"""The JSON Schema generated from module param declarations agrees with `validate_params`:
values the schema accepts the validator accepts, and values it refuses are refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft4Validator

from taskd.errors import ValidationError
from taskd.modules.params import validate_params
from taskd.modules.params_schema import params_schema
from taskd.modules.registry import ModuleRegistry

DEFS: list[dict[str, Any]] = [
    {"name": "flag", "type": "bool", "default": False},
    {"name": "count", "type": "int", "minimum": 1, "maximum": 9, "required": True},
    {"name": "ratio", "type": "float", "minimum": 0},
    {"name": "mode", "type": "select", "options": ["a", "b"]},
    {"name": "tags", "type": "string-list", "choices": ["x", "y"]},
    {"name": "to", "type": "email"},
    {"name": "extra", "type": "json", "schema": "object", "default": {}},
    {"name": "anything", "type": "json"},
]


def _draft4(schema: Any) -> Any:
    """OpenAPI 3.0's `nullable` as JSON Schema draft 4 understands it."""
    if isinstance(schema, dict):
        out = {k: _draft4(v) for k, v in schema.items() if k != "nullable"}
        if schema.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        elif schema.get("nullable") and "oneOf" in out:
            out["oneOf"] = [*out["oneOf"], {"type": "null"}]
        return out
    if isinstance(schema, list):
        return [_draft4(item) for item in schema]
    return schema


def _accepted(defs: list[dict[str, Any]], value: Any) -> bool:
    try:
        validate_params(defs, value)
    except ValidationError:
        return False
    return True


SCHEMA = _draft4(params_schema(DEFS))


@settings(max_examples=150, deadline=None)
@given(
    value=st.dictionaries(
        st.sampled_from([d["name"] for d in DEFS] + ["unknown"]),
        st.none()
        | st.booleans()
        | st.integers(-20, 20)
        | st.floats(-5, 5)
        | st.sampled_from(["a", "c", "ops@example.org", "x@y", ["x"], ["z"], {}, []])
        | st.text(max_size=5),
    )
)
def test_validator_and_schema_agree_on_arbitrary_params(value: dict[str, Any]) -> None:
    """On arbitrary objects both say the same: valid or not (both directions: what the
    document accepts is accepted, what it refuses is refused)."""
    assert Draft4Validator(SCHEMA).is_valid(value) == _accepted(DEFS, value), value


@pytest.mark.parametrize("name", ModuleRegistry.builtin().names())
def test_every_builtin_module_has_a_valid_params_schema(name: str) -> None:
    """Each built-in module's declarations give a schema that is itself valid."""
    module = ModuleRegistry.builtin().get(name)
    schema = _draft4(params_schema(module.params))
    Draft4Validator.check_schema(schema)
    assert set(schema["properties"]) == {d["name"] for d in module.params}
