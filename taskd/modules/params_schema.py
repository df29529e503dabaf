"""A module's parameter definitions (the fylr `config_def` form, see `params`) as the JSON
Schema (OpenAPI 3.0 dialect) of the `task_params` they accept.

Generated from the same definitions `validate_params` checks against, so the API document
cannot drift from the validator: each type maps to the schema of exactly the values its
check accepts (`int`: an integer, `float`: any finite number, `select`: its options, ...),
with `minimum` / `maximum`, `required`, and null for "not given" where the validator reads
it so. What a definition cannot say (a module's `check_params` rules across parameters, a
secret file that must exist and be private) is beyond the schema; the document says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from taskd.modules.params import EMAIL_PATTERN

__all__ = ["SECRET_FILE_SCHEMA", "WHITESPACE", "param_schema", "params_schema", "portable"]

# Python's `\s` (what taskd's validators use) spelt out for a character class: a JSON
# Schema regex is ECMA 262, whose `\s` differs (it lacks \x1c-\x1f and \x85, has \ufeff).
WHITESPACE = r"\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def portable(pattern: str) -> str:
    r"""A Python regex using `\s` only inside character classes, for JSON Schema."""
    return pattern.replace(r"\s", WHITESPACE)


# A secret read from a file (`{"file": "/absolute/path"}`); the file must exist and be
# private when the params are checked, which no schema can tell.
SECRET_FILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "additionalProperties": False,
    "properties": {"file": {"type": "string", "pattern": "^/"}},
    "description": "A secret read from this private file (mode 0600 or 0400).",
}
_STRING = {"type": "string"}


def params_schema(defs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The schema of a `task_params` object for the definitions `defs` (valid ones)."""
    properties = {str(spec["name"]): param_schema(spec) for spec in defs}
    required = [str(spec["name"]) for spec in defs if spec.get("required", False)]
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = required
    return schema


def param_schema(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The schema of one parameter's value, as `params._check_value` accepts it."""
    schema = _value_schema(spec)
    secret = spec.get("secret", spec["type"] == "secret")
    if secret is True:
        schema = _with_secret_files(schema, spec)
    # JSON null is "not given" for every type but an unconstrained `json` (where it is a
    # value): the default applies, so it is refused only where the parameter is required.
    if not spec.get("required", False) and spec["type"] != "json":
        schema["nullable"] = True
    if "default" in spec and spec["default"] is not None:
        schema["default"] = spec["default"]
    if isinstance(spec.get("description"), str):
        schema["description"] = spec["description"]
    return schema


def _value_schema(spec: Mapping[str, Any]) -> dict[str, Any]:
    kind = spec["type"]
    if kind == "bool":
        return {"type": "boolean"}
    if kind in ("int", "float"):
        schema: dict[str, Any] = {"type": "integer" if kind == "int" else "number"}
        for key in ("minimum", "maximum"):
            if key in spec:
                schema[key] = spec[key]
        return schema
    if kind in ("text", "text-multiline", "secret"):
        return dict(_STRING)
    if kind == "email":
        return {"type": "string", "pattern": f"^{portable(EMAIL_PATTERN)}$"}
    if kind == "select":
        return {"type": "string", "enum": list(spec["options"])}
    if kind == "string-list":
        item: dict[str, Any] = dict(_STRING)
        if "choices" in spec:
            item["enum"] = list(spec["choices"])
        return {"type": "array", "items": item}
    # json: any value, or narrowed to an object or an array.
    narrowed = spec.get("schema")
    if narrowed == "object":
        return {"type": "object", "additionalProperties": True}
    if narrowed == "array":
        return {"type": "array", "items": {}}
    return {"nullable": True}


def _with_secret_files(schema: dict[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """A secret value may be a file reference: the whole value, or each value of an
    object (a `json` object whose values are secret)."""
    if spec["type"] == "json" and spec.get("schema") == "object":
        return {"type": "object", "additionalProperties": True}
    if spec["type"] == "json":
        return schema  # any value holds a reference already
    return {"oneOf": [schema, SECRET_FILE_SCHEMA]}
