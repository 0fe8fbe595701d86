"""Every command's `--help` at 80 and 160 columns, as a newcomer reads it in a terminal: whole option names
(none cut to `--name,--nodepool-na…`), no word split across lines (`upgrade-` / `status`), no `<bool>`
value on a flag, no line wider than the terminal. Through Typer's runner with COLUMNS for every command,
and in a real 80-column pty for the widest ones."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.cells import cell_len
from terminal_session import Terminal
from typer.core import TyperGroup
from typer.testing import CliRunner

from trustedlaunch.cli.main import app

TL = str(Path(sys.executable).parent / "tl")


def _commands(group: TyperGroup, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, group)]
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            found += _commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


ROOT = typer.main.get_command(app)
assert isinstance(ROOT, TyperGroup)
COMMANDS = _commands(ROOT)


def words(text: str) -> str:
    return " ".join(text.split())


def check_help(command: Any, path: tuple[str, ...], out: str, width: int) -> None:
    """`out`, the help of `command`, fits `width` and shows each option and help text whole."""
    where = f"tl {' '.join(path)} --help at {width} columns"
    too_wide = [line for line in out.splitlines() if cell_len(line) > width]
    assert not too_wide, f"{where}: lines wider than {width}:\n" + "\n".join(too_wide)
    assert "<bool>" not in out and "…" not in out, where
    flat = words(out)
    if command.help:
        assert words(command.help.split("\f")[0]) in flat, f"{where}: the command's help is split"
    for param in command.params:
        for name in (*param.opts, *param.secondary_opts):
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", out), f"{where}: {name} is cut"
            if getattr(param, "is_flag", False):  # a flag takes no value: none is shown
                assert not re.search(rf"{re.escape(name)} (<|VALUE)", out), f"{where}: {name} shows a value"
        if getattr(param, "help", None):
            assert words(param.help) in flat, f"{where}: the help of {param.name} is split or cut"


@pytest.mark.parametrize("width", [80, 160])
def test_every_commands_help_fits_and_keeps_names_and_words_whole(width: int) -> None:
    assert len(COMMANDS) >= 60
    runner = CliRunner()
    for path, command in COMMANDS:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": str(width)})
        assert result.exit_code == 0, (path, result.output)
        check_help(command, path, result.stdout, width)


def test_help_in_a_real_80_column_terminal() -> None:
    """The terminal's own width, as the pty reports it (no COLUMNS), lays the help out."""
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm"
    by_path = dict(COMMANDS)
    for path in (("aks", "nodepool", "update"), ("aks", "create"), ("aks", "machine", "show")):
        terminal = Terminal([TL, *path, "--help"], env, columns=80)
        try:
            out = terminal.wait(timeout=60)
        finally:
            terminal.close()
        assert terminal.process.returncode == 0, out
        check_help(by_path[path], path, out, 80)
        assert "-n, --name, --nodepool-name <str>\n" in out or "--name" not in by_path[path].params[1].opts
