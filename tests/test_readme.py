"""The README and the behaviour agree: what messages cite exists, what it shows works."""

from __future__ import annotations

import asyncio
import functools
import io
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path

import pytest
from api_fixtures import WAIT_SEC, open_api

from taskd.api.app import build_app, registered_routes
from taskd.api.auth import Authenticator
from taskd.cli import _build_parser, main
from taskd.schedule import parse_schedule
from taskd.settings import ApiSettings

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# How taskd's messages cite the README: (see README, 'Heading').
CITATION = re.compile(r"README, '([^']+)'")


def headings() -> set[str]:
    """Every Markdown heading of the README, without its #s (code blocks left out)."""
    found, in_code = set(), False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(line.lstrip("#").strip())
    return found


def test_every_readme_citation_in_the_code_names_a_real_heading() -> None:
    """A message that says "see README, 'X'" points to a heading X that exists."""
    known = headings()
    citations = {
        (path.relative_to(REPO).as_posix(), title)
        for path in sorted((REPO / "taskd").rglob("*.py"))
        for title in CITATION.findall(path.read_text(encoding="utf-8"))
    }
    assert citations, "no citation found: has the message format changed?"
    missing = sorted((path, title) for path, title in citations if title not in known)
    assert missing == []


def test_every_cross_reference_in_the_readme_names_a_real_part() -> None:
    """The README's own `see "X"` names a heading or a paragraph's bold lead (**X.**)."""
    text = README.read_text(encoding="utf-8")
    known = headings() | set(re.findall(r"\*\*([^*]+?)\.\*\*", text))
    cited = re.findall(r'\b[Ss]ee "([^"]+)"', text)
    assert len(cited) >= 3, cited
    assert sorted(set(cited) - known) == []


def test_readme_cron_day_rule_is_what_the_engine_does() -> None:
    """The README's examples of cron's day-of-month/day-of-week rule hold (issue 9.7)."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "`0 12 1-31 * 1` fires every day" in text
    assert "`0 0 */2 * 1` fires on the odd days that are Mondays" in text
    thursday = datetime(2026, 1, 1, tzinfo=UTC)
    every_day = parse_schedule({"cron": "0 12 1-31 * 1"})
    assert every_day.next_after(thursday) == datetime(2026, 1, 1, 12, tzinfo=UTC)
    odd_mondays = parse_schedule({"cron": "0 0 */2 * 1"})
    # Monday the 5th, not Saturday the 3rd (odd) nor Monday the 12th.
    assert odd_mondays.next_after(thursday) == datetime(2026, 1, 5, tzinfo=UTC)


def test_readme_zone_names_in_any_case() -> None:
    """README: zone names in any case, kept in the canonical spelling (issue 9.8)."""
    assert "`europe/berlin` is kept as `Europe/Berlin`" in README.read_text(encoding="utf-8")
    schedule = parse_schedule({"hours": [2], "timezone": "europe/berlin"})
    assert schedule.to_json()["timezone"] == "Europe/Berlin"


# ---------------------------------------------------------------------------------------
# The commands and the HTTP routes the README shows exist, as it shows them.

TASKD = re.compile(r"^(?:\S*/)?taskd$")  # `taskd`, `.venv/bin/taskd`, `/usr/bin/taskd`
SEPARATORS = {"&&", "||", ";", "|"}
ROUTE = re.compile(
    r"`((?:GET|POST|PUT|DELETE)(?:/(?:GET|POST|PUT|DELETE))*) (/(?:[^`\s{]|\{[^`}]*\})*)`"
)


def code_blocks(language: str) -> list[list[str]]:
    """The lines of each fenced code block of the README opened with ```language."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    inside = False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
            current = [] if inside and line[3:].strip() == language else None
            if current is not None:
                blocks.append(current)
        elif current is not None:
            current.append(line)
    return blocks


def shell_commands() -> list[list[str]]:
    """The simple commands of the README's sh and console blocks, as argument lists:
    prompts dropped, backslash continuations joined, comments left out, `&&` and `;` lists
    split. A line that opens a quote (a JSON body) is joined with the lines that close it."""
    commands: list[list[str]] = []
    for block in code_blocks("sh") + code_blocks("console"):
        pending = ""
        for line in block:
            line = line.removeprefix("$ ")
            pending = f"{pending}\n{line}" if pending else line
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            try:
                lexer = shlex.shlex(pending, posix=True, punctuation_chars=";&|")
                lexer.whitespace_split = True
                lexer.commenters = "#"
                tokens = list(lexer)
            except ValueError:  # an open quote: the command goes on
                continue
            pending = ""
            command: list[str] = []
            for token in [*tokens, ";"]:
                if token in SEPARATORS:
                    if command:
                        commands.append(command)
                    command = []
                else:
                    command.append(token)
    return commands


def taskd_commands() -> list[list[str]]:
    """The `taskd ...` commands of the README's code blocks, without the program name."""
    return [command[1:] for command in shell_commands() if TASKD.match(command[0])]


def test_every_taskd_command_in_a_readme_code_block_parses() -> None:
    """Each `taskd ...` line the README gives to copy is accepted by taskd's own parser:
    the commands, options and values are the ones `--help` shows."""
    commands = taskd_commands()
    assert len(commands) >= 8, commands
    refused = []
    for argv in commands:
        with redirect_stderr(io.StringIO()) as errors:
            try:
                _build_parser().parse_args(argv)
            except SystemExit:
                refused.append((shlex.join(argv), errors.getvalue().strip()))
    assert refused == []


@functools.cache
def help_text(path: tuple[str, ...]) -> str:
    """What `taskd PATH --help` prints."""
    with redirect_stdout(io.StringIO()) as out:
        assert main([*path, "--help"]) == 0
    return out.getvalue()


def subcommands(help_: str) -> set[str]:
    """The subcommands a --help text lists (indented by four spaces under "commands:")."""
    listing = help_.partition("\ncommands:\n")[2]
    return set(re.findall(r"^    ([a-z][-a-z]*)(?=\s|$)", listing, re.MULTILINE))


def unknown_words(words: list[str]) -> list[str]:
    """The subcommands and options of `taskd WORDS` that taskd's --help does not know.

    Words are walked like argparse would: a lowercase word where the command so far has
    subcommands must be one of them; an option must appear in the help of the command so
    far, and skips its value if the help shows it with one (`--out FILE`); anything else
    (TASK, COMMAND, a file, a name) is an argument."""
    path: tuple[str, ...] = ()
    help_ = help_text(path)
    unknown = []
    position = 0
    while position < len(words):
        word = words[position]
        position += 1
        if word.startswith("-"):
            option = word.split("=")[0]
            known = re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])( [A-Z])?", help_)
            if known is None:
                unknown.append(f"taskd {' '.join(path)} {option}")
            elif known.group(1) and "=" not in word:
                position += 1
        elif subcommands(help_) and not word.isupper():
            if word not in subcommands(help_):
                unknown.append(f"taskd {' '.join(path)} {word}")
                break
            path = (*path, word)
            help_ = help_text(path)
    return unknown


def readme_command_lines() -> list[list[str]]:
    """Every command line the README names, as words without `taskd`: its code blocks, its
    inline `taskd ...` spans, the synopsis of "The command line" and its table of `taskd
    ctl` commands (each of "pause TASK / resume TASK" apart, brackets and `|` left out)."""
    text = README.read_text(encoding="utf-8")
    lines = taskd_commands()
    lines += [shlex.split(span) for span in re.findall(r"`(?:\S*/)?taskd ([^`]+)`", text)]
    synopsis, table = (
        block
        for block in code_blocks("text")
        if block and (block[0].startswith("taskd ") or block[0].startswith("list "))
    )
    usages = [re.split(r"\s{2,}", line)[0] for line in synopsis]
    for line in table:
        if line and not line[0].isspace():
            usages += ["taskd ctl " + each for each in re.split(r"\s{2,}", line)[0].split(" / ")]
    lines += [re.sub(r"[][|]", " ", usage).split()[1:] for usage in usages]
    return lines


def test_every_command_and_option_the_readme_names_is_in_help() -> None:
    """Every subcommand and option in the README, in code, inline or in its tables, is one
    that `taskd ... --help` lists, under the command it is shown with."""
    lines = readme_command_lines()
    assert len(lines) >= 30, lines
    unknown = sorted({word for words in lines for word in unknown_words(words)})
    assert unknown == []


def test_the_readme_tables_list_every_command() -> None:
    """The other way round: every command of `taskd --help` is in the README's synopsis,
    and every command of `taskd ctl --help` in its table of ctl commands."""
    named = {tuple(words[:2]) for words in readme_command_lines() if words}
    top = {words[0] for words in named}
    ctl = {words[1] for words in named if words[0] == "ctl" and len(words) > 1}
    assert subcommands(help_text(())) - top == set()
    assert subcommands(help_text(("ctl",))) - ctl == set()


def served_routes() -> list[tuple[str, re.Pattern[str]]]:
    """(method, path pattern) of every route the API app serves, /metrics included."""
    app = build_app(
        core=None,  # type: ignore[arg-type]
        auth=Authenticator([], []),
        api_settings=ApiSettings(),
        health=None,  # type: ignore[arg-type]
        metrics=object(),  # type: ignore[arg-type]
    )
    routes = []
    for route in registered_routes(app):
        assert route.resource is not None
        info = route.resource.get_info()
        pattern = info.get("pattern") or re.compile(re.escape(info["path"]))
        routes.append((route.method, pattern))
    return routes


def is_served(method: str, path: str) -> bool:
    return any(m == method and p.fullmatch(path) for m, p in served_routes())


def readme_routes() -> set[tuple[str, str]]:
    """The routes the README's text names (`GET/POST /api/v2/tasks`), as (method, path)
    pairs with a sample value for each {placeholder} and each `{a,b}` choice spelled out."""
    routes = set()
    for methods, path in ROUTE.findall(README.read_text(encoding="utf-8")):
        if not path.startswith(("/api/", "/metrics")):
            continue  # a path relative to a prefix, such as /tasks/{id}/action/...
        paths = [path.split("?")[0]]
        while any("{" in each for each in paths):
            spelled = []
            for each in paths:
                start, end = each.index("{"), each.index("}")
                inner = each[start + 1 : end]
                choices = inner.split(",") if "," in inner else ["1"]
                spelled += [each[:start] + choice + each[end + 1 :] for choice in choices]
            paths = spelled
        routes |= {(method, each) for method in methods.split("/") for each in paths}
    return routes


def test_every_route_the_readme_names_is_served() -> None:
    """Each `METHOD /path` of the README's route table and text is a route of the API."""
    routes = readme_routes()
    assert len(routes) >= 20, routes
    assert sorted(route for route in routes if not is_served(*route)) == []


def test_every_served_route_is_in_the_readme() -> None:
    """Each route the API serves is named in the README (the fylr spec's singular alias of
    /api/v1/task/modules apart)."""
    named = readme_routes()
    undocumented = [
        (method, pattern.pattern)
        for method, pattern in served_routes()
        if not any(m == method and pattern.fullmatch(path) for m, path in named)
    ]
    assert undocumented == [("GET", re.escape("/api/v1/task/module"))]


def curl_requests() -> list[tuple[str, str]]:
    """(method, path) of each curl command of the README: `-X`, else POST with `-d`, else
    GET; `$API` is what the README sets it to."""
    api = re.search(r"\bAPI=(\S+)", README.read_text(encoding="utf-8"))
    assert api is not None
    requests = []
    for command in shell_commands():
        if command[0] != "curl":
            continue
        words = [word.replace("$API", api.group(1)) for word in command]
        urls = [word for word in words if re.match(r"https?://", word)]
        assert len(urls) == 1, command
        path = "/" + urls[0].split("/", 3)[3].split("?")[0]
        method = "GET"
        if "-X" in words:
            method = words[words.index("-X") + 1]
        elif "-d" in words:
            method = "POST"
        requests.append((method, path))
    return requests


def test_every_curl_example_of_the_readme_names_a_served_route() -> None:
    """The README's curl lines ask for routes the API serves, with the method it serves."""
    requests = curl_requests()
    assert len(requests) >= 15, requests
    assert [request for request in requests if not is_served(*request)] == []


# ---------------------------------------------------------------------------------------
# What the README promises of `taskd ctl log -f`, beyond tests/test_ctl.py.


async def test_log_follow_exits_1_when_the_daemon_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: `log TASK -f` follows "until Ctrl-C (exit 130) or until the daemon stops
    (exit 1)": the daemon's shutdown ends the stream, and ctl says so and exits 1."""
    async with open_api(tmp_path) as api:
        await api.create("long", task_module="shell", task_params={"command": "echo go; sleep 30"})
        await api.unix.put("/api/v2/tasks/long/action/run")
        argv = ["ctl", "--socket", str(api.socket_path), "log", "-f", "long"]
        follower = asyncio.ensure_future(asyncio.to_thread(main, argv))
        printed = ""
        async with asyncio.timeout(WAIT_SEC):
            while "go" not in printed.split():
                await asyncio.sleep(0.05)
                printed += capsys.readouterr().out
        assert not follower.done()
    async with asyncio.timeout(WAIT_SEC):
        assert await follower == 1
    assert "is shutting down: the log stream ended" in capsys.readouterr().err
