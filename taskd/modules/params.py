"""Module parameters: checking a module's `params` definitions and a task's `task_params`.

A module declares its parameters in the fylr `config_def` form, one dict per parameter:

- `name` (required) and `type` (required), one of `PARAM_TYPES`:
  `bool`; `int`; `float` (taskd's addition: an int or a float, never a bool); `text`,
  `text-multiline` and `secret` (strings); `email` (a string holding a plausible address);
  `select` (a string out of `options`); `string-list` (a list of strings, each out of
  `choices` if given); `json` (any JSON value; `"schema": "object"` or `"array"` narrows it);
- `default`: used when the task does not give the parameter; checked against the type;
- `required` (taskd's addition, default false): the task must give the parameter;
- `options` (`select`), `choices` (`string-list`), `schema` (`json`), `minimum` and `maximum`
  (inclusive, `int` and `float`);
- `secret` (taskd's addition): the value is secret, never shown by the API (it shows
  `SECRET_MASK`, and a client that sends the mask back keeps the stored value): `true` for
  the whole value (for an object or a list: each of its values, the keys stay visible;
  type `secret` is secret without it), `"url_password"` for the password of a URL. A
  secret value (for an object, each of its values) may be `{"file": "/absolute/path"}`:
  the value is read from that file when the params are checked (at every write and before
  every run), and the file must be private, like an API key file (owned by root or taskd's
  user, mode 0600 or 0400). Reading files is blocking I/O: callers on the event loop read
  them first with `load_secret_files_async` (in a thread, a few at a time, with a deadline)
  and hand the contents in (`files=`); `read_secret_files` reads them itself only when no
  contents are given (the command line, a thread);
- presentation keys that fylr clients know (`description`, `group`, `position`, ...), kept
  as they are and not checked.

`validate_params` fills the defaults in: its result holds every defined parameter, the given
value, else the default, else None. A JSON `null` given for a parameter that is not `json`
counts as "not given".
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import re
import stat
import urllib.parse
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskd.errors import FieldError, ValidationError, join_path
from taskd.validate import boolean, describe, did_you_mean, fail, json_copy, string, suggest

__all__ = [
    "EMAIL_PATTERN",
    "PARAM_TYPES",
    "SECRET_FILE_READ_SEC",
    "SECRET_MASK",
    "SecretFiles",
    "has_secret_files",
    "keep_secrets",
    "load_secret_files",
    "load_secret_files_async",
    "read_secret_files",
    "redact_params",
    "scrub",
    "secret_file_paths",
    "secret_values",
    "validate_param_defs",
    "validate_params",
]

# What the API shows instead of a secret value; sent back, it means "keep the stored one".
SECRET_MASK = "***"

# A secret file's content, or why it cannot be used, by the path its reference names.
SecretFiles = Mapping[str, "str | _Unusable"]
# How long reading the secret files of one validation may take (a hung network mount).
SECRET_FILE_READ_SEC = 5.0
# Secret files read at once, process-wide: each read takes a thread of the default pool.
_SECRET_FILE_READERS = 4
# One semaphore per event loop (a semaphore belongs to the loop it first waited in).
_readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)

PARAM_TYPES = (
    "bool",
    "int",
    "float",
    "text",
    "text-multiline",
    "secret",
    "email",
    "select",
    "string-list",
    "json",
)
_STRING_TYPES = frozenset({"text", "text-multiline", "secret"})
_NUMBER_TYPES = frozenset({"int", "float"})
_JSON_SCHEMAS = ("object", "array")
# Type-specific keys and the types that may carry them.
_TYPE_KEYS = {
    "options": ("select",),
    "choices": ("string-list",),
    "schema": ("json",),
    "minimum": ("int", "float"),
    "maximum": ("int", "float"),
}
# Keys a definition may carry: those taskd reads, then fylr's presentation keys, which
# clients may use and taskd passes through. Anything else is most likely a typo
# (`requried`) that would silently change the meaning, so it is refused.
_CHECKED_KEYS = frozenset(
    {
        "name",
        "type",
        "default",
        "required",
        "options",
        "choices",
        "schema",
        "minimum",
        "maximum",
        "secret",
    }
)
_PRESENTATION_KEYS = frozenset(
    {
        "description",
        "label",
        "group",
        "position",
        "parameters",
        "plugin_type",
        "require_system_right",
        "unauthenticated_visible",
    }
)
# Plausible, not RFC 5322: one @, something on each side, a dot in the domain, no spaces or
# list separators (a common mistake is pasting "a@x.org, b@x.org" into one field).
EMAIL_PATTERN = r"[^@\s,;<>\"]+@[^@\s,;<>\".]+(\.[^@\s,;<>\".]+)+"
_EMAIL = re.compile(EMAIL_PATTERN)
# Strings of any kind, the empty one included.
_text = string(allow_empty=True)


def validate_params(
    defs: list[dict[str, Any]], raw: object, *, path: str = "task_params"
) -> dict[str, Any]:
    """Check `raw` against the definitions `defs`; return the params with defaults filled in.

    `defs` must be valid (see `validate_param_defs`). The result has one key per definition,
    in definition order. Raises `ValidationError` listing every problem, each at its path
    below `path`: `raw` not an object, an unknown parameter, a value of the wrong type or out
    of its range or options, a required parameter missing.
    """
    if not isinstance(raw, Mapping):
        fail(path, f"must be an object, got {describe(raw)}")
    errors: list[FieldError] = []
    known = [spec["name"] for spec in defs]
    for key in raw:
        if key not in known:
            errors.append(FieldError(join_path(path, str(key)), _unknown_parameter(key, known)))
    params: dict[str, Any] = {}
    for spec in defs:
        name = spec["name"]
        if not _given(spec, raw):
            if spec.get("required", False):
                errors.append(FieldError(join_path(path, name), "required parameter is missing"))
            # A copy keeps a task's stored params apart from the module's own definitions.
            params[name] = copy.deepcopy(spec.get("default"))
            continue
        try:
            params[name] = _check_value(spec, raw[name], join_path(path, name))
        except ValidationError as error:
            errors.extend(error.errors)
    if errors:
        raise ValidationError(errors)
    return params


def validate_param_defs(defs: object, *, path: str = "params") -> None:
    """Check a module's own parameter definitions; raise `ValidationError` if malformed.

    Refused: `defs` not a list, an item not an object, a missing or duplicate `name`, an
    unknown `type`, an unknown key, a type-specific key on the wrong type or of the wrong
    shape, a `required` parameter with a `default`, a `default` that its own definition
    refuses.
    """
    if not isinstance(defs, list):
        fail(path, f"must be a list, got {describe(defs)}")
    errors: list[FieldError] = []
    seen: set[str] = set()
    for index, spec in enumerate(defs):
        item_path = f"{path}[{index}]"
        if not isinstance(spec, Mapping):
            errors.append(FieldError(item_path, f"must be an object, got {describe(spec)}"))
            continue
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            errors.append(FieldError(join_path(item_path, "name"), "must be a non-empty string"))
        elif name in seen:
            errors.append(FieldError(join_path(item_path, "name"), f"duplicate name {name!r}"))
        else:
            seen.add(name)
        errors.extend(_def_errors(spec, item_path))
    if errors:
        raise ValidationError(errors)


def _unknown_parameter(key: object, known: list[str]) -> str:
    close = suggest(str(key), known)
    hint = f"; did you mean {close!r}?" if close is not None else ""
    return f"unknown parameter{hint} (known: {', '.join(known) or 'none'})"


# ---------------------------------------------------------------------------------------
# Definitions


def _def_errors(spec: Mapping[str, Any], path: str) -> list[FieldError]:
    """The problems of one definition (its name aside)."""
    errors: list[FieldError] = []

    def refuse(key: str, reason: str) -> None:
        errors.append(FieldError(join_path(path, key), reason))

    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        hint = did_you_mean(kind, PARAM_TYPES) if isinstance(kind, str) else ""
        refuse("type", f"unknown type {kind!r} (known: {', '.join(PARAM_TYPES)}){hint}")
        return errors
    for key in spec:
        if key not in _CHECKED_KEYS and key not in _PRESENTATION_KEYS:
            close = suggest(str(key), _CHECKED_KEYS | _PRESENTATION_KEYS)
            hint = f"; did you mean {close!r}?" if close is not None else ""
            refuse(str(key), f"unknown key in a parameter definition{hint}")
    for key, owners in _TYPE_KEYS.items():
        if key in spec and kind not in owners:
            refuse(key, f"only {' and '.join(repr(o) for o in owners)} parameters have {key!r}")
    if kind == "select" and "options" not in spec:
        refuse("options", "a 'select' parameter needs its options")
    for key in ("options", "choices"):
        if key in spec and not _is_distinct_strings(spec[key]):
            refuse(key, "must be a non-empty list of distinct strings")
    if "schema" in spec and spec["schema"] not in _JSON_SCHEMAS:
        refuse("schema", f"must be one of {', '.join(_JSON_SCHEMAS)}, got {spec['schema']!r}")
    for key in ("minimum", "maximum"):
        if key in spec and not _is_number(spec[key]):
            refuse(key, f"must be a number, got {describe(spec[key])}")
    secret = spec.get("secret", False)
    if not (isinstance(secret, bool) or secret == "url_password"):
        refuse("secret", f"must be true, false or 'url_password', got {describe(secret)}")
    elif secret == "url_password" and kind not in _STRING_TYPES:
        refuse("secret", "only a text parameter holds a URL")
    required = spec.get("required", False)
    try:
        required = boolean(required, join_path(path, "required"))
    except ValidationError as error:
        errors.extend(error.errors)
    else:
        if required and "default" in spec:
            refuse("default", "a required parameter has no default")
    # The default is checked with the definition itself, which must be sound for that.
    if not errors and spec.get("default") is not None:
        try:
            _check_value(spec, spec["default"], join_path(path, "default"))
        except ValidationError as error:
            errors.extend(error.errors)
    return errors


# ---------------------------------------------------------------------------------------
# Values


def _given(spec: Mapping[str, Any], raw: Mapping[str, Any]) -> bool:
    """Whether `raw` gives the parameter: present and not null, unless null is a value."""
    if spec["name"] not in raw:
        return False
    # JSON clients send null for "not set"; only an unconstrained `json` param holds null.
    return raw[spec["name"]] is not None or (spec["type"] == "json" and "schema" not in spec)


def _check_value(spec: Mapping[str, Any], value: Any, path: str) -> Any:
    """Return `value` converted for its definition, or raise `ValidationError` at `path`."""
    kind = spec["type"]
    if kind == "bool":
        return boolean(value, path)
    if kind in _NUMBER_TYPES:
        return _check_number(spec, value, path)
    if kind in _STRING_TYPES:
        return _text(value, path)
    if kind == "email":
        text = _text(value, path)
        if not _EMAIL.fullmatch(text):
            fail(path, f"must be an e-mail address such as 'ops@example.org', got {text!r}")
        return text
    if kind == "select":
        text = _text(value, path)
        options: list[str] = spec["options"]
        if text not in options:
            hint = did_you_mean(text, options)
            fail(path, f"must be one of {', '.join(options)}, got {text!r}{hint}")
        return text
    if kind == "string-list":
        return _check_string_list(spec, value, path)
    return _check_json(spec, value, path)


def _check_number(spec: Mapping[str, Any], value: Any, path: str) -> int | float:
    kind = spec["type"]
    if not _is_number(value):
        noun = "an integer" if kind == "int" else "a number"
        fail(path, f"must be {noun}, got {describe(value)}")
    number: int | float
    if kind == "int":
        # JSON has one number type; clients that write 3.0 mean 3.
        if isinstance(value, float) and not value.is_integer():
            fail(path, f"must be an integer, got {describe(value)}")
        number = int(value)
    else:
        number = float(value)
    if "minimum" in spec and number < spec["minimum"]:
        fail(path, f"must be at least {spec['minimum']}, got {value!r}")
    if "maximum" in spec and number > spec["maximum"]:
        fail(path, f"must be at most {spec['maximum']}, got {value!r}")
    return number


def _check_string_list(spec: Mapping[str, Any], value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        fail(path, f"must be a list of strings, got {describe(value)}")
    choices: list[str] | None = spec.get("choices")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            fail(path, f"item [{index}] must be a string, got {describe(item)}")
        if choices is not None and item not in choices:
            hint = did_you_mean(item, choices)
            fail(path, f"item [{index}] must be one of {', '.join(choices)}, got {item!r}{hint}")
    return list(value)


def _check_json(spec: Mapping[str, Any], value: Any, path: str) -> Any:
    """A `json` param: a deep copy of `value` (kept apart from whatever the caller does with
    its input), refused as a whole at `path` for the first part JSON cannot hold."""
    copied, problems = json_copy(value, path)
    if problems:
        problem = problems[0]
        if problem.kind == "number":
            fail(path, f"must be a JSON value; {problem.culprit} is not a finite number")
        if problem.kind == "key":
            fail(path, f"must be a JSON value; object key {problem.culprit!r} is not a string")
        fail(path, f"must be a JSON value, got {describe(problem.culprit)}")
    schema = spec.get("schema")
    if schema == "object" and not isinstance(copied, dict):
        fail(path, f"must be an object, got {describe(value)}")
    if schema == "array" and not isinstance(copied, list):
        fail(path, f"must be an array, got {describe(value)}")
    return copied


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but true is not 1 to anyone writing JSON.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _is_distinct_strings(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, str) for item in value)
        and len(set(value)) == len(value)
    )


# ---------------------------------------------------------------------------------------
# Secrets


def _secret(spec: Mapping[str, Any]) -> bool | str:
    """True (the value), "url_password" or False: what of a parameter is secret."""
    secret: bool | str = spec.get("secret", spec["type"] == "secret")
    return secret


def _split_url_password(url: str) -> tuple[str, str, str] | None:
    """(text before the password, the password, text after it), or None if `url` has none.

    Textual, so the URL keeps its exact spelling (its percent-encoding included)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    authority_end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority = rest[:authority_end]
    userinfo, at, _ = authority.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not at or not colon:
        return None
    head = f"{scheme}://{user}:"
    return head, password, url[len(head) + len(password) :]


def _file_ref(value: Any) -> str | None:
    """The path of a `{"file": path}` reference, or None if `value` is no reference."""
    if isinstance(value, Mapping) and set(value) == {"file"} and isinstance(value["file"], str):
        return value["file"]
    return None


@dataclass(frozen=True, slots=True)
class _Unusable:
    """Why a secret file cannot be used (said at the reference's path)."""

    reason: str


def _load_secret_file(text: str) -> str | _Unusable:
    """The secret in the file `text` names (one trailing newline dropped), or why it cannot
    be used: a relative path, an unreadable file, one others may read or change. Blocking."""
    if "\0" in text:  # no file can have that name (os.stat raises ValueError)
        return _Unusable("must be a path without NUL characters")
    file = Path(text)
    if not file.is_absolute():
        return _Unusable(f"must be an absolute path, got {text!r}")
    try:
        info = file.stat()
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in (0, os.geteuid()) or mode & 0o077:
            return _Unusable(
                f"{file} is mode {mode:04o} owned by uid {info.st_uid}: a secret file must"
                f" belong to root or taskd's user and be readable by it alone"
                f" (chmod 600 {file})"
            )
        content = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return _Unusable(f"cannot read {file}: {getattr(error, 'strerror', None) or error}")
    return content[:-1] if content.endswith("\n") else content


def load_secret_files(paths: Iterable[str]) -> dict[str, str | _Unusable]:
    """Read the secret files `paths` name (blocking: not on the event loop)."""
    return {text: _load_secret_file(text) for text in paths}


async def load_secret_files_async(
    paths: Iterable[str], *, timeout_sec: float | None = None
) -> dict[str, str | _Unusable]:
    """`load_secret_files` in a thread, at most `_SECRET_FILE_READERS` reads at once in the
    process, within `timeout_sec` (default `SECRET_FILE_READ_SEC`): a file system that does
    not answer makes each file unusable ("no answer ...") instead of holding the caller, or
    the loop. The thread of a read that never returns stays blocked (Python cannot end
    it); the semaphore is released, so at most the default pool's threads can be lost."""
    if timeout_sec is None:
        timeout_sec = SECRET_FILE_READ_SEC
    wanted = list(dict.fromkeys(paths))
    if not wanted:
        return {}
    readers = _readers.setdefault(
        asyncio.get_running_loop(), asyncio.Semaphore(_SECRET_FILE_READERS)
    )
    try:
        async with asyncio.timeout(timeout_sec), readers:
            return await asyncio.to_thread(load_secret_files, wanted)
    except TimeoutError:
        late = _Unusable(f"no answer from the file system within {timeout_sec:g} s")
        return dict.fromkeys(wanted, late)


def secret_file_paths(defs: list[dict[str, Any]], raw: object) -> list[str]:
    """The files `raw` params name for secret values (`{"file": path}`), in order."""
    if not isinstance(raw, Mapping):
        return []
    paths: list[str] = []
    for spec in defs:
        if _secret(spec) is not True:
            continue
        value = raw.get(spec["name"])
        if (ref := _file_ref(value)) is not None:
            paths.append(ref)
        elif isinstance(value, Mapping):
            paths.extend(ref for item in value.values() if (ref := _file_ref(item)) is not None)
    return paths


def _read_secret_file(text: str, path: str, files: SecretFiles) -> str:
    """The content of the secret file `text` names from `files`; ValidationError at `path`
    if it cannot be used (or was not read)."""
    content = files.get(text)
    if content is None:
        content = _Unusable(f"{text} was not read")
    if isinstance(content, _Unusable):
        fail(path, content.reason)
    return content


def has_secret_files(defs: list[dict[str, Any]], raw: object) -> bool:
    """Whether `raw` params name a file for any secret value (its content can change)."""
    if not isinstance(raw, Mapping):
        return False
    for spec in defs:
        value = raw.get(spec["name"])
        if _secret(spec) is True and (
            _file_ref(value) is not None
            or (isinstance(value, Mapping) and any(_file_ref(v) for v in value.values()))
        ):
            return True
    return False


def read_secret_files(
    defs: list[dict[str, Any]],
    raw: object,
    *,
    path: str = "task_params",
    files: SecretFiles | None = None,
) -> object:
    """`raw` params with every `{"file": path}` of a secret value replaced by the file's
    content (others are left for `validate_params` to judge). Raises ValidationError at
    the reference's `file` for a file that cannot be used.

    `files`: the contents read before (`load_secret_files_async`, off the loop); without
    them the files are read here, blocking (callers off the event loop only)."""
    if not isinstance(raw, Mapping) or not has_secret_files(defs, raw):
        return raw
    if files is None:
        files = load_secret_files(secret_file_paths(defs, raw))
    resolved = dict(raw)
    errors: list[FieldError] = []
    for spec in defs:
        name = spec["name"]
        value = raw.get(name)
        if _secret(spec) is not True:
            continue
        try:
            if (ref := _file_ref(value)) is not None:
                resolved[name] = _read_secret_file(
                    ref, join_path(join_path(path, name), "file"), files
                )
            elif isinstance(value, Mapping):
                resolved[name] = {
                    key: _read_secret_file(ref, f"{join_path(path, name)}.{key}.file", files)
                    if (ref := _file_ref(item)) is not None
                    else item
                    for key, item in value.items()
                }
        except ValidationError as error:
            errors.extend(error.errors)
    if errors:
        raise ValidationError(errors)
    return resolved


def _masked(value: Any, secret: bool | str) -> Any:
    if _file_ref(value) is not None:
        return value  # where the secret lives is no secret
    if secret == "url_password":
        parts = _split_url_password(value) if isinstance(value, str) else None
        return value if parts is None else parts[0] + SECRET_MASK + parts[2]
    if isinstance(value, dict):
        return {k: v if _file_ref(v) is not None else SECRET_MASK for k, v in value.items()}
    if isinstance(value, list):
        return [SECRET_MASK for _ in value]
    return SECRET_MASK


def redact_params(defs: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with every secret value replaced by `SECRET_MASK` (see the `secret` key);
    a value that is not given (None) stays None. Pure: `params` is not changed."""
    shown = dict(params)
    for spec in defs:
        name, secret = spec["name"], _secret(spec)
        if secret and shown.get(name) is not None:
            shown[name] = _masked(shown[name], secret)
    return shown


# Secret values shorter than this are not scrubbed from text: masking "on" or "42" in every
# line would garble logs and give the value away anyway.
_MIN_SCRUBBED = 4


def secret_values(defs: list[dict[str, Any]], params: Mapping[str, Any]) -> tuple[str, ...]:
    """The secret strings in `params` (a secret value; each string of a secret object or
    list; a URL's password, as written and percent-decoded), longest first, for `scrub`.
    A file reference is not a secret; its content is, once `params` hold it."""
    found: set[str] = set()
    for spec in defs:
        secret, value = _secret(spec), params.get(spec["name"])
        if not secret or value is None or _file_ref(value) is not None:
            continue
        if secret == "url_password":
            parts = _split_url_password(value) if isinstance(value, str) else None
            if parts is not None:
                found.update((parts[1], urllib.parse.unquote(parts[1])))
            continue
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                found.add(item)
            elif isinstance(item, Mapping):
                stack.extend(v for v in item.values() if _file_ref(v) is None)
            elif isinstance(item, list):
                stack.extend(item)
    return tuple(sorted((s for s in found if len(s) >= _MIN_SCRUBBED), key=len, reverse=True))


def scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    """`value` with every occurrence of each of `secrets` in its strings (an object's keys
    and values, a list's items, nested) replaced by `SECRET_MASK`. Pure."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, SECRET_MASK)
        return value
    if isinstance(value, Mapping):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(item, secrets) for item in value]
    return value


def keep_secrets(
    defs: list[dict[str, Any]],
    sent: Mapping[str, Any],
    stored: Mapping[str, Any],
    *,
    path: str = "task_params",
) -> dict[str, Any]:
    """`sent` params with each `SECRET_MASK` a client sent back (as a shown value, an
    object's value, a URL's password) replaced by the `stored` value it stands for. A mask
    with nothing stored behind it stays as sent. Pure.

    A URL's password is kept only for the same URL (all but the password unchanged), and
    no mask is kept once a URL changed: a secret must not follow its task to another
    server unless the client knows it. Raises ValidationError at the mask's path then.
    """
    urls = [spec["name"] for spec in defs if _secret(spec) == "url_password"]
    moved = [
        name
        for name in urls
        if name in sent
        and name in stored
        and _masked(sent[name], "url_password") != _masked(stored[name], "url_password")
    ]
    merged = dict(sent)
    kept: list[str] = []
    for spec in defs:
        name, secret = spec["name"], _secret(spec)
        if not secret or name not in sent or name not in stored:
            continue
        value, old = sent[name], stored[name]
        if secret == "url_password":
            new_parts = _split_url_password(value) if isinstance(value, str) else None
            old_parts = _split_url_password(old) if isinstance(old, str) else None
            if new_parts and old_parts and new_parts[1] == SECRET_MASK:
                merged[name] = new_parts[0] + old_parts[1] + new_parts[2]
                kept.append(name)
        elif value == SECRET_MASK:
            merged[name] = old
            kept.append(name)
        elif isinstance(value, dict) and isinstance(old, dict):
            merged[name] = {
                key: old[key] if item == SECRET_MASK and key in old else item
                for key, item in value.items()
            }
            kept += [
                join_path(name, key)
                for key, item in value.items()
                if item == SECRET_MASK and key in old
            ]
        elif isinstance(value, list) and isinstance(old, list) and len(value) == len(old):
            merged[name] = [o if v == SECRET_MASK else v for v, o in zip(value, old, strict=True)]
            if SECRET_MASK in value:
                kept.append(name)
    if moved and kept:
        raise ValidationError(
            [
                FieldError(
                    join_path(path, name),
                    f"{SECRET_MASK!r} keeps the stored secret only while"
                    f" {', '.join(moved)} stays the same: send the value itself",
                )
                for name in kept
            ]
        )
    return merged
