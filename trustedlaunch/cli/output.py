"""How `tl` prints results, as az 2.91 does: `-o json|jsonc|table|tsv|yaml|none`, `--query` (JMESPath,
applied before the format), and tables that fit the terminal.

A table lists its columns most important first. At the terminal's width (COLUMNS, else the terminal's
own; unlimited when stdout is not a terminal and COLUMNS is unset, so pipes get whole lines) the columns
that do not fit are left out, least important first, instead of splitting words: the rest stays available
through `-o json` and `--query`. Only columns of prose (findings, signers) wrap, and only between words.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jmespath
import typer
import yaml
from jmespath.exceptions import JMESPathError
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from trustedlaunch.cli.errors import bad_input

UNLIMITED_WIDTH = 4096
COLUMN_GAP = 2  # cells between two columns
MIN_PROSE_WIDTH = 16


class OutputFormat(StrEnum):
    """`--output`/`-o` values (az's)."""

    json = "json"
    jsonc = "jsonc"
    table = "table"
    tsv = "tsv"
    yaml = "yaml"
    none = "none"


@dataclass(frozen=True)
class Column:
    """A table column: its header, whether its cells are prose that may wrap between words, and its rank
    when the terminal is too narrow for every column (lower: kept first; default: its position)."""

    header: str
    prose: bool = False
    priority: int | None = None


ColumnSpec = str | Column


@dataclass(frozen=True)
class DetailTable:
    """A table printed under a resource's `-o table` row for what one row cannot hold (e.g. the packages of
    a node image version): its title, columns and rows."""

    title: str
    columns: Sequence[ColumnSpec]
    rows: Sequence[Sequence[object]]


_QUERY: ContextVar[str | None] = ContextVar("tl_query", default=None)


def check_query(argument: str, query: str) -> None:
    """Refuse `query`, the JMESPath value of `argument` (`--query`, `--custom`), if it does not parse: a
    command-line error (exit 2), as az's."""
    try:
        jmespath.compile(query)
    except JMESPathError as exc:
        raise bad_input(f"argument {argument}: invalid jmespath_type value: {query!r} ({exc})") from None


def apply_query(argument: str, query: str, value: object, what: str = "the result") -> Any:
    """`query` (checked by check_query) applied to `value`; an error only the data reveals (a function given
    the wrong type) is a command-line error naming `argument`."""
    try:
        return jmespath.search(query, value)
    except JMESPathError as exc:
        raise bad_input(f"argument {argument}: {query!r} cannot be applied to {what} ({exc})") from None


@contextmanager
def query_scope(query: str | None) -> Iterator[None]:
    """Within the block, `output` applies the JMESPath `query` (`--query`) to every result."""
    if query is not None:
        check_query("--query", query)
    token = _QUERY.set(query)
    try:
        yield
    finally:
        _QUERY.reset(token)


def terminal_width() -> int:
    """Cells a table may use: COLUMNS, else the terminal's width, else unlimited (stdout not a terminal, or
    a terminal without a size)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        size = os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else 0
    except (OSError, ValueError):  # no real file descriptor (captured output)
        size = 0
    return size if size > 0 else UNLIMITED_WIDTH  # a pty nobody sized reports 0 columns


def _cell(value: object) -> str | Text:
    if value is None:
        return ""
    if isinstance(value, Text):
        return value
    return str(value)


def _width(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def _longest_word(cell: str | Text) -> int:
    words = str(cell).split()
    return max((cell_len(word) for word in words), default=0)


def fitting_columns(
    columns: Sequence[ColumnSpec], rows: Sequence[Sequence[str | Text]], width: int
) -> list[int]:
    """Indexes of the columns to show at `width`, in their order: taken by priority while they fit at their
    natural width, prose columns at least at their longest word (or MIN_PROSE_WIDTH)."""
    specs = [spec if isinstance(spec, Column) else Column(spec) for spec in columns]
    ranked = sorted(
        range(len(specs)), key=lambda i: (specs[i].priority if specs[i].priority is not None else i, i)
    )
    chosen: list[int] = []
    used = 0
    for index in ranked:
        column = specs[index]
        natural = max([cell_len(column.header), *(_width(row[index]) for row in rows)])
        needed = natural
        if column.prose:
            longest = max([cell_len(column.header), *(_longest_word(row[index]) for row in rows)])
            needed = min(natural, max(longest, MIN_PROSE_WIDTH))
        gap = COLUMN_GAP if chosen else 0
        if used + gap + needed <= width:
            chosen.append(index)
            used += gap + needed
    return sorted(chosen) or [ranked[0]]


def print_table(
    columns: Sequence[ColumnSpec],
    rows: Sequence[Sequence[object]],
    *,
    width: int | None = None,
    title: str | None = None,
    console: Console | None = None,
) -> None:
    """Print rows as a table of the columns that fit `width` (default: the terminal's), no word split."""
    width = terminal_width() if width is None else width
    cells = [[_cell(value) for value in row] for row in rows]
    shown = fitting_columns(columns, cells, width)
    table = Table(box=None, pad_edge=False, padding=(0, COLUMN_GAP // 2), header_style="bold", title=title)
    for index in shown:
        spec = columns[index]
        column = spec if isinstance(spec, Column) else Column(spec)
        table.add_column(column.header, no_wrap=not column.prose, overflow="fold")
    for row in cells:
        table.add_row(*(row[index] for index in shown))
    (console or Console(width=width, soft_wrap=False)).print(table)


def _tsv_value(value: object) -> str | None:
    """A value's tsv field (az: nested objects and lists are left out)."""
    if isinstance(value, dict | list):
        return None
    if value is None:
        return ""
    return str(value)


def _tsv_lines(value: object) -> list[str]:
    items = value if isinstance(value, list) else [value]
    lines = []
    for item in items:
        if isinstance(item, dict):
            fields = [field for field in map(_tsv_value, item.values()) if field is not None]
        elif isinstance(item, list):
            fields = [field for field in map(_tsv_value, item) if field is not None]
        else:
            fields = [_tsv_value(item) or ""]
        lines.append("\t".join(fields))
    return lines


def _query_table(value: object) -> tuple[list[ColumnSpec], list[list[object]]]:
    """A `--query` result as a table: its objects' keys as columns (az), or one Result column."""
    items: list[object] = value if isinstance(value, list) else [value]
    objects = [item for item in items if isinstance(item, dict)]
    if items and len(objects) == len(items):
        keys: list[str] = []
        for item in objects:
            keys += [key for key in item if key not in keys]
        headers: list[ColumnSpec] = [key[:1].upper() + key[1:] for key in keys]
        return headers, [[_scalar(item.get(key)) for key in keys] for item in objects]
    return ["Result"], [[_scalar(item)] for item in items]


def _scalar(value: object) -> object:
    return json.dumps(value) if isinstance(value, dict | list) else value


def render(
    value: object,
    fmt: OutputFormat,
    columns: Sequence[ColumnSpec],
    row: Callable[[Any], Sequence[object]],
    table_rows: Callable[[Any], Sequence[Sequence[object]]] | None = None,
    details: Callable[[Any], Sequence[DetailTable]] | None = None,
) -> None:
    """Print a result (a resource or a list of them) in `fmt` after the scope's `--query`; `-o table`
    without a query prints `columns` with `row(item)` per item (or the rows `table_rows(result)` gives),
    then the tables `details(result)` gives, each fitting the terminal as well."""
    query = _QUERY.get()
    if query is not None:
        value = apply_query("--query", query, value)
    if fmt is OutputFormat.none:
        return
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(value, indent=2, ensure_ascii=False))
    elif fmt is OutputFormat.jsonc:
        Console(soft_wrap=True).print_json(data=value, indent=2)
    elif fmt is OutputFormat.yaml:
        typer.echo(yaml.safe_dump(value, sort_keys=False, allow_unicode=True), nl=False)
    elif fmt is OutputFormat.tsv:
        for line in _tsv_lines(value):
            typer.echo(line)
    elif query is not None:
        headers, rows = _query_table(value)
        print_table(headers, rows)
    elif table_rows is not None:
        print_table(columns, table_rows(value))
    elif value is not None:
        print_table(columns, [row(item) for item in (value if isinstance(value, list) else [value])])
    if fmt is OutputFormat.table and query is None and value is not None and details is not None:
        for detail in details(value):
            typer.echo()
            print_table(detail.columns, detail.rows, title=detail.title)
