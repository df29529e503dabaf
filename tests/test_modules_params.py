"""Module params and the module registry: validation messages, defaults, entry points."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from typing import Any

import pytest
from structlog.testing import capture_logs

from taskd.errors import FieldError, NotFoundError, ValidationError
from taskd.modules import registry as registry_module
from taskd.modules.base import Module, ModuleContext
from taskd.modules.params import (
    PARAM_TYPES,
    has_secret_files,
    keep_secrets,
    load_secret_files,
    read_secret_files,
    redact_params,
    scrub,
    secret_values,
    validate_param_defs,
    validate_params,
)
from taskd.modules.registry import ModuleRegistry
from taskd.testing import FakeContext

pytestmark = pytest.mark.usefixtures("no_blocking")  # nothing may block the event loop

DEFS: list[dict[str, Any]] = [
    {"name": "flag", "type": "bool", "default": False},
    {"name": "count", "type": "int", "default": 3, "minimum": 1, "maximum": 10},
    {"name": "ratio", "type": "float", "default": 0.5},
    {"name": "title", "type": "text", "required": True},
    {"name": "notes", "type": "text-multiline"},
    {"name": "token", "type": "secret"},
    {"name": "mail", "type": "email"},
    {"name": "mode", "type": "select", "options": ["fast", "slow"], "default": "fast"},
    {"name": "tags", "type": "string-list", "default": []},
    {"name": "extra", "type": "json"},
    {"name": "options", "type": "json", "schema": "object", "default": {}},
]


def errors_of(raw: object, defs: list[dict[str, Any]] = DEFS) -> list[str]:
    """The `path: reason` strings validate_params raises for `raw` (fails if it does not)."""
    with pytest.raises(ValidationError) as info:
        validate_params(defs, raw)
    return [str(error) for error in info.value.errors]


def def_errors_of(defs: object) -> list[str]:
    """The `path: reason` strings validate_param_defs raises for `defs`."""
    with pytest.raises(ValidationError) as info:
        validate_param_defs(defs)
    return [str(error) for error in info.value.errors]


# ---- validate_params


def test_defaults_filled_in_and_every_param_present() -> None:
    """Only the required param given: every other param gets its default, or None."""
    params = validate_params(DEFS, {"title": "t"})
    assert params == {
        "flag": False,
        "count": 3,
        "ratio": 0.5,
        "title": "t",
        "notes": None,
        "token": None,
        "mail": None,
        "mode": "fast",
        "tags": [],
        "extra": None,
        "options": {},
    }


def test_valid_values_of_every_type_are_kept() -> None:
    """A value of each type passes through; an int given for a float becomes a float."""
    raw = {
        "flag": True,
        "count": 10,
        "ratio": 2,
        "title": "t",
        "notes": "a\nb",
        "token": "s3cret",
        "mail": "ops@example.org",
        "mode": "slow",
        "tags": ["a", "b"],
        "extra": [1, {"x": None}],
        "options": {"k": [True]},
    }
    params = validate_params(DEFS, raw)
    assert params == {**raw, "ratio": 2.0}
    assert isinstance(params["ratio"], float)


def test_defaults_are_copies() -> None:
    """Mutating a filled-in default does not change the definition's default."""
    params = validate_params(DEFS, {"title": "t"})
    params["options"]["changed"] = True
    params["tags"].append("x")
    assert DEFS[10]["default"] == {}
    assert DEFS[8]["default"] == []


def test_unknown_parameter_message_names_the_known_ones() -> None:
    """An unknown key reads `task_params.foo: unknown parameter (known: a, b)`."""
    defs: list[dict[str, Any]] = [
        {"name": "a", "type": "int", "default": 1},
        {"name": "b", "type": "bool"},
    ]
    assert errors_of({"foo": 1}, defs) == ["task_params.foo: unknown parameter (known: a, b)"]


def test_non_object_raw_is_refused() -> None:
    """task_params given as a list or a string is refused at `task_params` itself."""
    assert errors_of([1]) == ["task_params: must be an object, got an array"]
    assert errors_of("x") == ["task_params: must be an object, got the string 'x'"]


def test_every_problem_is_reported_at_once() -> None:
    """Unknown key, bad types, missing required and bad option: all in one error."""
    errors = errors_of({"nope": 1, "flag": "yes", "count": 1.5, "mode": "medium", "tags": ["a", 2]})
    assert errors == [
        "task_params.nope: unknown parameter (known: flag, count, ratio, title, notes, "
        "token, mail, mode, tags, extra, options)",
        "task_params.flag: must be true or false, got the string 'yes'",
        "task_params.count: must be an integer, got the number 1.5",
        "task_params.title: required parameter is missing",
        "task_params.mode: must be one of fast, slow, got 'medium'",
        "task_params.tags: item [1] must be a string, got the number 2",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"count": True}, "task_params.count: must be an integer, got true"),
        ({"count": 0}, "task_params.count: must be at least 1, got 0"),
        ({"count": 11}, "task_params.count: must be at most 10, got 11"),
        ({"ratio": False}, "task_params.ratio: must be a number, got false"),
        ({"ratio": "1"}, "task_params.ratio: must be a number, got the string '1'"),
        ({"ratio": float("nan")}, "task_params.ratio: must be a number, got the number nan"),
        ({"notes": 5}, "task_params.notes: must be a string, got the number 5"),
        ({"token": ["x"]}, "task_params.token: must be a string, got an array"),
        ({"mail": "ops"}, "task_params.mail: must be an e-mail address such as"),
        ({"mail": "a@b.org, c@d.org"}, "task_params.mail: must be an e-mail address"),
        ({"tags": "a"}, "task_params.tags: must be a list of strings, got the string 'a'"),
        ({"options": [1]}, "task_params.options: must be an object, got an array"),
        ({"extra": {1: "x"}}, "task_params.extra: must be a JSON value; object key 1"),
        ({"extra": float("inf")}, "task_params.extra: must be a JSON value; inf is not"),
        ({"extra": {1, 2}}, "task_params.extra: must be a JSON value, got a set"),
    ],
)
def test_ill_typed_value_messages(raw: dict[str, Any], expected: str) -> None:
    """Each ill-typed value is refused at its own path with a message saying what it must be."""
    errors = errors_of({"title": "t", **raw})
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected)


def test_integral_float_is_accepted_for_int() -> None:
    """JSON's 3.0 is the int 3: clients that only have doubles can set int params."""
    assert validate_params(DEFS, {"title": "t", "count": 3.0})["count"] == 3


def test_null_means_not_given_except_for_plain_json() -> None:
    """null for a typed param (or an object-schema json) takes its default; plain json keeps it."""
    params = validate_params(DEFS, {"title": "t", "count": None, "options": None, "extra": None})
    assert params["count"] == 3
    assert params["options"] == {}
    assert params["extra"] is None
    assert errors_of({"title": None}) == ["task_params.title: required parameter is missing"]


def test_custom_path_prefixes_every_error() -> None:
    """With path=`task[2].task_params` the errors are reported below that path."""
    with pytest.raises(ValidationError) as info:
        validate_params(DEFS, {"flag": 1}, path="task[2].task_params")
    paths = [error.path for error in info.value.errors]
    assert paths == ["task[2].task_params.flag", "task[2].task_params.title"]


# ---- validate_param_defs


def test_valid_defs_pass() -> None:
    """The sample definitions, one of each type, are accepted."""
    validate_param_defs(DEFS)
    assert {spec["type"] for spec in DEFS} == set(PARAM_TYPES)


@pytest.mark.parametrize(
    ("defs", "expected"),
    [
        ({"name": "a"}, "params: must be a list, got an object"),
        (["a"], "params[0]: must be an object, got the string 'a'"),
        ([{"type": "int"}], "params[0].name: must be a non-empty string"),
        ([{"name": "a", "type": "number"}], "params[0].type: unknown type 'number' (known: "),
        ([{"name": "a", "type": "int", "default": "1"}], "params[0].default: must be an int"),
        ([{"name": "a", "type": "select", "options": ["x"], "default": "y"}], "params[0].def"),
        ([{"name": "a", "type": "select"}], "params[0].options: a 'select' parameter needs"),
        ([{"name": "a", "type": "select", "options": []}], "params[0].options: must be a non-e"),
        ([{"name": "a", "type": "text", "options": ["x"]}], "params[0].options: only 'select'"),
        ([{"name": "a", "type": "json", "schema": "list"}], "params[0].schema: must be one of"),
        ([{"name": "a", "type": "text", "minimum": 1}], "params[0].minimum: only 'int' and"),
        ([{"name": "a", "type": "int", "requried": True}], "params[0].requried: unknown key"),
        ([{"name": "a", "type": "int", "required": 1}], "params[0].required: must be true or"),
        ([{"name": "a", "type": "int", "required": True, "default": 1}], "params[0].default: a"),
        ([{"name": "a", "type": "int", "default": 0, "minimum": 1}], "params[0].default: must"),
    ],
)
def test_malformed_defs_are_refused(defs: object, expected: str) -> None:
    """Each malformed definition is refused with the path of the faulty key."""
    errors = def_errors_of(defs)
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected)


def test_duplicate_names_are_refused() -> None:
    """Two definitions with one name: the second is refused."""
    defs = [{"name": "a", "type": "int"}, {"name": "a", "type": "text"}]
    assert def_errors_of(defs) == ["params[1].name: duplicate name 'a'"]


def test_presentation_keys_are_allowed() -> None:
    """fylr's presentation keys (description, group, position) do not make a def malformed."""
    validate_param_defs(
        [{"name": "a", "type": "int", "description": "x", "group": "g", "position": 1}]
    )


# ---- The registry


def test_builtin_registry_holds_the_five_modules() -> None:
    """builtin() has shell, http, sleep, python and files, each a Module with valid params."""
    registry = ModuleRegistry.builtin()
    assert registry.names() == ["files", "http", "python", "shell", "sleep"]
    for name in registry.names():
        module = registry.get(name)
        assert isinstance(module, Module)
        assert module.name == name
        assert set(module.description) == {"en-US", "de-DE"}
        validate_param_defs(module.params)


def test_get_unknown_module_names_the_known_ones() -> None:
    """get("nope") raises NotFoundError (a LookupError) listing the known modules."""
    known = "files, http, python, shell, sleep"
    with pytest.raises(NotFoundError, match=rf"'nope'; known modules: {known}"):
        ModuleRegistry.builtin().get("nope")


def test_describe_lists_copies_for_the_api() -> None:
    """describe() gives name, description and params; changing them leaves the module alone."""
    registry = ModuleRegistry.builtin()
    listing = registry.describe()
    assert [item["name"] for item in listing] == registry.names()
    assert all(set(item) == {"name", "description", "params"} for item in listing)
    sleep = next(item for item in listing if item["name"] == "sleep")
    assert sleep["params"][0] == {
        "name": "seconds",
        "type": "float",
        "required": True,
        "minimum": 0,
    }
    sleep["params"][0]["type"] = "text"
    assert registry.get("sleep").params[0]["type"] == "float"


def test_validate_unknown_module_is_reported_at_task_module() -> None:
    """An unknown module name is a ValidationError at `task_module` (or the given path)."""
    registry = ModuleRegistry.builtin()
    with pytest.raises(ValidationError) as info:
        registry.validate("nope", {}, path="task[0].task_params", module_path="task[0].task_module")
    assert [str(e) for e in info.value.errors] == [
        "task[0].task_module: unknown module 'nope';"
        " known modules: files, http, python, shell, sleep"
    ]


def test_validate_runs_the_module_check_params_under_path() -> None:
    """A module's check_params errors are reported below the params path."""
    registry = ModuleRegistry.builtin()
    with pytest.raises(ValidationError) as info:
        registry.validate("shell", {"argv": ["true"], "command": "true"}, path="p")
    assert [str(e) for e in info.value.errors] == [
        "p.command: give exactly one of argv and command"
    ]


def test_validate_returns_filled_params() -> None:
    """Valid params come back with the module's defaults filled in."""
    params = ModuleRegistry.builtin().validate("sleep", {"seconds": 1})
    assert params == {"seconds": 1.0, "steps": 10, "fail": False}


class _PlugIn:
    """A well-formed third-party module."""

    name = "plugin"
    description: Mapping[str, str] = {"en-US": "A plug-in."}
    params: list[dict[str, Any]] = [{"name": "n", "type": "int", "default": 1}]  # noqa: RUF012

    async def run(self, ctx: ModuleContext) -> str:
        return f"n={ctx.params['n']}"


class _BadParams(_PlugIn):
    name = "badparams"
    params: list[dict[str, Any]] = [{"name": "n", "type": "integer"}]  # noqa: RUF012


class _FakeEntryPoint:
    """An entry point whose load() returns a given object (or raises)."""

    def __init__(self, name: str, obj: object = None, error: BaseException | None = None) -> None:
        self.name = name
        self.value = f"plugins:{name}"
        self.group = "taskd.modules"
        self._obj = obj
        self._error = error

    def load(self) -> object:
        if self._error is not None:
            raise self._error
        return self._obj


def _factory() -> _PlugIn:
    module = _PlugIn()
    module.name = "made"
    return module


def _failing_factory() -> Module:
    raise RuntimeError("no config")


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace the entry points the registry sees with the list the test fills in."""
    points: list[Any] = []

    def entry_points(*, group: str) -> list[Any]:
        assert group == "taskd.modules"
        return points

    monkeypatch.setattr(registry_module, "entry_points", entry_points)
    return points


async def test_entry_points_instance_class_and_factory_are_loaded(
    fake_entry_points: list[Any],
) -> None:
    """An instance, a class and a factory all register, and the module runs."""
    instance = _PlugIn()
    fake_entry_points.extend(
        [
            _FakeEntryPoint("plugin", instance),
            _FakeEntryPoint("made", _factory),
        ]
    )
    registry = ModuleRegistry.builtin()
    assert registry.load_entry_points() == ["plugin", "made"]
    assert registry.get("plugin") is instance
    assert registry.problems() == []
    params = registry.validate("made", {"n": 4})
    assert await registry.get("made").run(FakeContext(params=params)) == "n=4"

    only_class = ModuleRegistry()
    fake_entry_points[:] = [_FakeEntryPoint("plugin", _PlugIn)]
    assert only_class.load_entry_points() == ["plugin"]
    assert isinstance(only_class.get("plugin"), _PlugIn)


def test_broken_entry_points_are_skipped_logged_and_reported(
    fake_entry_points: list[Any],
) -> None:
    """Import errors, bad objects, bad params, name clashes: skipped with a warning each."""
    fake_entry_points.extend(
        [
            _FakeEntryPoint("gone", error=ModuleNotFoundError("No module named 'plugins'")),
            _FakeEntryPoint("exits", error=SystemExit(3)),
            _FakeEntryPoint("number", 42),
            _FakeEntryPoint("failing", _failing_factory),
            _FakeEntryPoint("badparams", _BadParams()),
            _FakeEntryPoint("other", _PlugIn()),  # the module is named "plugin"
            _FakeEntryPoint("shell", _shell_clash()),
            _FakeEntryPoint("plugin", _PlugIn()),  # the one good entry
        ]
    )
    registry = ModuleRegistry.builtin()
    with capture_logs() as logs:
        assert registry.load_entry_points() == ["plugin"]
    reasons = {problem.entry_point: problem.reason for problem in registry.problems()}
    assert reasons == {
        "gone": "import failed: ModuleNotFoundError: No module named 'plugins'",
        "exits": "import failed: SystemExit: 3",
        "number": "names a int, not a module, class or factory",
        "failing": "calling its factory failed: RuntimeError: no config",
        "badparams": "module 'badparams': params[0].type: unknown type 'integer' (known: "
        + ", ".join(PARAM_TYPES)
        + ")",
        "other": "the module is named 'plugin'; it must be named like its entry point",
        "shell": "a module named 'shell' is already registered",
    }
    assert [log["entry_point"] for log in logs] == list(reasons)
    assert all(log["event"] == "module_skipped" for log in logs)
    assert all(log["log_level"] == "warning" for log in logs)
    assert registry.names() == ["files", "http", "plugin", "python", "shell", "sleep"]
    assert str(registry.problems()[0]) == (
        "module 'gone' (plugins:gone) skipped: import failed: ModuleNotFoundError: "
        "No module named 'plugins'"
    )


def _shell_clash() -> _PlugIn:
    module = _PlugIn()
    module.name = "shell"
    return module


def test_real_entry_point_with_missing_package_is_skipped(
    fake_entry_points: list[Any],
) -> None:
    """A real importlib EntryPoint naming a missing package is skipped, not raised."""
    fake_entry_points.append(
        EntryPoint("ghost", "taskd_no_such_plugin_pkg:module", "taskd.modules")
    )
    registry = ModuleRegistry()
    with capture_logs():
        assert registry.load_entry_points() == []
    [problem] = registry.problems()
    assert problem.target == "taskd_no_such_plugin_pkg:module"
    assert "No module named 'taskd_no_such_plugin_pkg'" in problem.reason


def test_register_refuses_malformed_modules() -> None:
    """register() refuses a non-module, a sync run and a duplicate name with ValueError."""

    class SyncRun(_PlugIn):
        name = "sync"

        def run(self, ctx: ModuleContext) -> str:  # type: ignore[override]
            return "x"

    registry = ModuleRegistry([_PlugIn()])
    with pytest.raises(ValueError, match="not a module"):
        registry.register(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coroutine function"):
        registry.register(SyncRun())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(_PlugIn())


def test_check_params_paths_are_joined() -> None:
    """A check_params error at "" lands on the params path itself."""

    class Checked(_PlugIn):
        name = "checked"

        def check_params(self, params: dict[str, Any]) -> list[FieldError]:
            return [FieldError("", "always wrong"), FieldError("n", "odd")]

    registry = ModuleRegistry([Checked()])
    with pytest.raises(ValidationError) as info:
        registry.validate("checked", {})
    assert [str(e) for e in info.value.errors] == [
        "task_params: always wrong",
        "task_params.n: odd",
    ]


def test_shell_comand_suggests_command() -> None:
    """`task_params.comand` for the shell module suggests `command` (issue 9.8)."""
    with pytest.raises(ValidationError) as info:
        ModuleRegistry.builtin().validate("shell", {"comand": "ls"})
    (error,) = info.value.errors
    assert error.path == "task_params.comand"
    assert error.reason.startswith("unknown parameter; did you mean 'command'?")


def test_select_and_module_names_suggest() -> None:
    """A misspelt select option, param type or module name suggests the known one."""
    defs: list[dict[str, Any]] = [{"name": "mode", "type": "select", "options": ["fast", "slow"]}]
    assert errors_of({"mode": "fsat"}, defs) == [
        "task_params.mode: must be one of fast, slow, got 'fsat'; did you mean 'fast'?"
    ]
    with pytest.raises(ValidationError, match=r"did you mean 'string-list'\?"):
        validate_param_defs([{"name": "a", "type": "string_list"}])
    with pytest.raises(NotFoundError, match=r"did you mean 'shell'\?"):
        ModuleRegistry.builtin().get("shel")


def test_unknown_parameter_suggests_a_close_name() -> None:
    """A typo of a parameter's name is refused with the name it most likely meant."""
    defs: list[dict[str, Any]] = [{"name": "command", "type": "text"}]
    assert errors_of({"commnd": "x"}, defs) == [
        "task_params.commnd: unknown parameter; did you mean 'command'? (known: command)"
    ]


# -- secrets ------------------------------------------------------------------------------

SECRET_DEFS: list[dict[str, Any]] = [
    {"name": "url", "type": "text", "secret": "url_password"},
    {"name": "headers", "type": "json", "schema": "object", "secret": True},
    {"name": "token", "type": "secret"},
    {"name": "argv", "type": "string-list", "secret": True},
    {"name": "plain", "type": "text"},
]


def test_secret_definitions_are_checked() -> None:
    """`secret` is true, false or "url_password" (on text params only)."""
    validate_param_defs(SECRET_DEFS)
    for bad in (
        {"name": "a", "type": "text", "secret": "yes"},
        {"name": "a", "type": "json", "secret": "url_password"},
    ):
        with pytest.raises(ValidationError) as caught:
            validate_param_defs([bad])
        assert caught.value.errors[0].path == "params[0].secret"


@pytest.mark.parametrize(
    ("params", "shown"),
    [
        ({"url": "https://u:p%40ss@h:1/x?q#f"}, {"url": "https://u:***@h:1/x?q#f"}),
        ({"url": "https://u@h/x"}, {"url": "https://u@h/x"}),
        ({"url": "https://h/x?a=b:c@d"}, {"url": "https://h/x?a=b:c@d"}),
        ({"headers": {"A": "1", "B": "2"}}, {"headers": {"A": "***", "B": "***"}}),
        ({"token": "t", "plain": "p"}, {"token": "***", "plain": "p"}),
        ({"argv": ["x", "y"], "token": None}, {"argv": ["***", "***"], "token": None}),
    ],
)
def test_redact_masks_secret_values_and_keep_secrets_undoes_it(
    params: dict[str, Any], shown: dict[str, Any]
) -> None:
    """redact_params masks what the definitions call secret (pure); keep_secrets, given
    the masked params back, restores the stored values."""
    before = json.dumps(params)
    assert redact_params(SECRET_DEFS, params) == shown
    assert json.dumps(params) == before
    assert keep_secrets(SECRET_DEFS, shown, params) == params


def test_keep_secrets_keeps_new_values_and_masks_without_a_stored_value() -> None:
    """A changed value is taken as sent; a mask with nothing stored behind it stays."""
    stored = {"headers": {"A": "1"}, "url": "https://u:p@h/"}
    sent = {"headers": {"A": "***", "B": "***", "C": "3"}, "url": "https://u:***@h/"}
    assert keep_secrets(SECRET_DEFS, sent, stored) == {
        "headers": {"A": "1", "B": "***", "C": "3"},
        "url": "https://u:p@h/",
    }


@pytest.mark.parametrize("url", ["https://u:***@evil.example/", "https://x:***@h/"])
def test_no_mask_is_kept_once_the_url_changed(url: str) -> None:
    """Masks sent with another URL (host or user) would hand the stored secrets to it:
    refused at each mask's path; the values themselves may be sent."""
    stored = {"headers": {"A": "1"}, "url": "https://u:p@h/"}
    with pytest.raises(ValidationError) as caught:
        keep_secrets(SECRET_DEFS, {"headers": {"A": "***"}, "url": url}, stored)
    assert {e.path for e in caught.value.errors} == {"task_params.url", "task_params.headers.A"}
    sent = {"headers": {"A": "1"}, "url": "https://u:p@evil.example/"}
    assert keep_secrets(SECRET_DEFS, sent, stored) == sent


def _secret_file(tmp_path: Any, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_secret_values_can_come_from_private_files(tmp_path: Any) -> None:
    """`{"file": path}` for a secret value (or an object's value) is read from the file
    (one trailing newline dropped); redact shows the reference, which is no secret."""
    path = _secret_file(tmp_path, "s3cret\n")
    raw = {"token": {"file": path}, "headers": {"A": {"file": path}, "B": "plain"}}
    assert has_secret_files(SECRET_DEFS, raw)
    assert read_secret_files(SECRET_DEFS, raw) == {
        "token": "s3cret",
        "headers": {"A": "s3cret", "B": "plain"},
    }
    assert redact_params(SECRET_DEFS, raw) == {
        "token": {"file": path},
        "headers": {"A": {"file": path}, "B": "***"},
    }
    assert not has_secret_files(SECRET_DEFS, {"plain": {"file": path}})


@pytest.mark.parametrize(
    ("setup", "reason"),
    [("mode", "readable by it alone"), ("relative", "absolute path"), ("missing", "cannot read")],
)
def test_unusable_secret_files_are_refused_at_the_reference(
    tmp_path: Any, setup: str, reason: str
) -> None:
    """A secret file others may read, a relative path or a missing file: ValidationError at
    the reference's `file`."""
    path = {
        "mode": _secret_file(tmp_path, "x", 0o644),
        "relative": "token",
        "missing": str(tmp_path / "nope"),
    }[setup]
    with pytest.raises(ValidationError) as caught:
        read_secret_files(SECRET_DEFS, {"headers": {"A": {"file": path}}})
    [error] = caught.value.errors
    assert error.path == "task_params.headers.A.file"
    assert reason in error.reason


def test_secret_values_and_scrub_mask_every_secret_string() -> None:
    """The secret strings of params (a value, an object's and a list's strings, a URL's
    password as written and decoded; not a file reference, not a short value) are masked
    wherever they occur in text, objects and lists; other text stays."""
    defs = [
        {"name": "url", "type": "text", "secret": "url_password"},
        {"name": "headers", "type": "json", "secret": True},
        {"name": "token", "type": "secret"},
        {"name": "plain", "type": "text"},
    ]
    params = {
        "url": "https://bot:p%40ssword1@example.org/",
        "headers": {"A": "Bearer abcdef", "B": ["listed-1"], "C": {"file": "/etc/x"}},
        "token": "on",
        "plain": "visible-text",
    }
    secrets = secret_values(defs, params)
    assert set(secrets) == {"p%40ssword1", "p@ssword1", "Bearer abcdef", "listed-1"}
    text = "GET https://bot:p%40ssword1@example.org/ said p@ssword1, Bearer abcdef; on"
    assert scrub(text, secrets) == "GET https://bot:***@example.org/ said ***, ***; on"
    assert scrub({"k listed-1": ["x Bearer abcdef", 3]}, secrets) == {"k ***": ["x ***", 3]}
    assert scrub("visible-text", secrets) == "visible-text"


def test_a_secret_file_path_with_a_nul_character_is_refused_not_an_error() -> None:
    """No file can be named with NUL (os.stat raises ValueError): the reference is refused
    with a reason, as the API fuzz found when it answered 500."""
    [(path, unusable)] = load_secret_files(["/\u00d8\x00"]).items()
    assert path == "/\u00d8\x00"
    assert not isinstance(unusable, str)
    assert "NUL" in unusable.reason
