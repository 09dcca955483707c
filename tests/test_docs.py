"""The CLI reference keeps up with the code.

Walks the click command tree (``fsobj.cli.cli`` and every group's subcommands,
whatever is registered, so commands added later are covered too) and checks
that every command and option has help text, that every command has a place in
``docs/cli.md`` (a heading or a line containing ``fsobj <command path>``) where
its options are named, and that the exit-code table in ``docs/cli.md`` lists
every code of ``fsobj.errors.EXIT_CODES`` with the errno the mount reports.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from fsobj import errors
from fsobj.cli import cli

CLI_MD = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """(``"partition grant"``, command) for every visible command below ``group``."""
    ctx = click.Context(group, info_name="fsobj")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = (*path, name)
        yield " ".join(sub), command
        if isinstance(command, click.Group):
            yield from _walk(command, sub)


COMMANDS = sorted(_walk(cli), key=lambda item: item[0])


def _doc() -> str:
    assert CLI_MD.is_file(), f"{CLI_MD.name} is missing: the CLI reference lives in docs/cli.md"
    return CLI_MD.read_text(encoding="utf-8")


def _mentions(text: str, words: str) -> bool:
    """``words`` occurs in ``text`` as whole words (``fsobj ls`` is not ``fsobj ls-x``)."""
    return re.search(rf"(?<![\w-]){re.escape(words)}(?![\w-])", text) is not None


def _section(doc: str, path: str) -> str | None:
    """The text under the heading ``fsobj <path>`` (down to the next heading of the
    same or a higher level), or None if there is no such heading."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(#+)\s+(.*)$", line)
        if m and m.group(2).replace("`", "").strip() == f"fsobj {path}":
            level = len(m.group(1))
            end = len(lines)
            for j in range(i + 1, len(lines)):
                n = re.match(r"(#+)\s", lines[j])
                if n and len(n.group(1)) <= level:
                    end = j
                    break
            return "\n".join(lines[i:end])
    return None


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


def _error_classes() -> list[type[errors.FsobjError]]:
    found: list[type[errors.FsobjError]] = []
    todo: list[type[errors.FsobjError]] = [errors.FsobjError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def _exit_code_row(doc: str, code: int) -> str | None:
    """The table row whose first cell is ``code`` (plain or in backticks)."""
    m = re.search(rf"^\|\s*`?{code}`?\s*\|.*$", doc, re.MULTILINE)
    return m.group(0) if m else None


# ---------------------------------------------------------------- the command tree


def test_command_tree_is_walked() -> None:
    names = {path for path, _ in COMMANDS}
    expected = {"identity create", "init", "partition grant", "put", "get", "ls", "log", "rm", "purge", "verify"}
    assert expected <= names, f"the walk of fsobj.cli.cli missed commands: {sorted(expected - names)}"


def test_root_has_help() -> None:
    assert (cli.help or "").strip(), "the fsobj group itself has no help text (docstring)"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_command_has_help(path: str, command: click.Command) -> None:
    text = (command.help or command.short_help or "").strip()
    assert text, f"'fsobj {path}' has no help text: give the click command a docstring or help="


def test_every_option_has_help() -> None:
    missing = [
        " ".join(filter(None, ("fsobj", path, option.opts[0])))
        for path, command in [("", cli), *COMMANDS]
        for option in _options(command)
        if not (option.help or "").strip()
    ]
    assert not missing, "options without help text (help= in click.option): " + ", ".join(missing)


# ---------------------------------------------------------------- docs/cli.md


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_command_is_in_cli_md(path: str, command: click.Command) -> None:
    assert _mentions(_doc(), f"fsobj {path}"), (
        f"docs/cli.md does not mention 'fsobj {path}': add a heading '### fsobj {path}' "
        "with its synopsis, options and what it does"
    )


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_command_options_are_in_cli_md(path: str, command: click.Command) -> None:
    doc = _doc()
    where = _section(doc, path)
    text = where if where is not None else doc
    missing = [
        "/".join(option.opts + option.secondary_opts)
        for option in _options(command)
        if not any(_mentions(text, flag) for flag in option.opts + option.secondary_opts)
    ]
    place = f"the section '### fsobj {path}'" if where is not None else "docs/cli.md"
    assert not missing, f"{place} does not name these options of 'fsobj {path}': {', '.join(missing)}"


def test_global_options_and_env_are_in_cli_md() -> None:
    doc = _doc()
    missing = []
    for option in _options(cli):
        if not any(_mentions(doc, flag) for flag in option.opts + option.secondary_opts):
            missing.append("/".join(option.opts))
        envvars = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or [])
        missing += [env for env in envvars if not _mentions(doc, env)]
    if not _mentions(doc, "FSOBJ_PASSPHRASE"):
        missing.append("FSOBJ_PASSPHRASE")
    assert not missing, "docs/cli.md does not name these global options or environment variables: " + ", ".join(missing)


def test_every_exit_code_is_in_cli_md() -> None:
    doc = _doc()
    missing = [
        f"{code} ({meaning})" for code, meaning in errors.EXIT_CODES.items() if _exit_code_row(doc, code) is None
    ]
    assert not missing, "the exit-code table in docs/cli.md has no row '| <code> | ...' for: " + "; ".join(missing)


def test_exit_code_rows_name_the_mount_errno() -> None:
    doc = _doc()
    problems = []
    for cls in _error_classes():
        row = _exit_code_row(doc, cls.exit_code)
        name = errno.errorcode.get(cls.errno, str(cls.errno))
        if row is None:
            problems.append(f"{cls.__name__}: no row for exit code {cls.exit_code}")
        elif not _mentions(row, name):
            problems.append(f"{cls.__name__}: the row for exit code {cls.exit_code} does not name errno {name}")
    assert not problems, "docs/cli.md exit-code table: " + "; ".join(problems)
