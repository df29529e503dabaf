"""Errors as answers: each kind of failure gets its status code and each dialect its shape.

v2 (Nodeum): validation -> 422 `model_error` (`messages`, `details` per attribute);
refused actions -> 409 `data_management_error`; unknown ids -> 404 `model_error` with a
`not_found` detail. v1 (fylr): `{"code", "statuscode", "description", "errors"}`.
Handlers raise `ApiError` (or the library's typed errors); a middleware renders them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from taskd.errors import FieldError


class ApiError(Exception):
    """An answer other than success: status, a code word, a message, per-field problems."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: Iterable[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = list(fields)
        self.headers = headers or {}


Renderer = Callable[[ApiError], web.Response]


def _json_response(body: dict[str, Any], status: int, headers: dict[str, str]) -> web.Response:
    return web.Response(
        text=json.dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def v2_error(error: ApiError) -> web.Response:
    """Render an error the Nodeum way."""
    if error.code == "data_management_error":
        body: dict[str, Any] = {
            "id": "data_management_error",
            "code": error.status,
            "detail": error.message,
            "status": str(error.status),
        }
        return _json_response(body, error.status, error.headers)
    details: dict[str, list[dict[str, str]]] = {}
    messages = [error.message] if not error.fields else []
    for field in error.fields:
        details.setdefault(field.path or "base", []).append(
            {"error": error.code, "reason": field.reason}
        )
        messages.append(str(field))
    if not details:
        details["base"] = [{"error": error.code, "reason": error.message}]
    return _json_response({"messages": messages, "details": details}, error.status, error.headers)


def v1_error(error: ApiError) -> web.Response:
    """Render an error the fylr way."""
    body: dict[str, Any] = {
        "code": f"error.api.{error.code}",
        "statuscode": error.status,
        "description": error.message,
    }
    if error.fields:
        body["errors"] = [{"path": f.path, "reason": f.reason} for f in error.fields]
    return _json_response(body, error.status, error.headers)
