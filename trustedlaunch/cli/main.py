"""Entry point of the `tl` command: one Typer app with a sub-app per area."""

from __future__ import annotations

import inspect
import sys
import textwrap
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, get_args, get_origin, get_type_hints

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import OptionInfo

from trustedlaunch import __version__
from trustedlaunch.cli import (
    aks,
    aks_upgrade,  # noqa: F401  (registers `aks upgrade`, `aks nodepool upgrade/get-upgrades`)
    alerts,
    attest,
    demo,
    eventlog,
    feature,
    group,
    host,
    image,
    image_versions,  # noqa: F401  (registers `image kernels`, `image versions`, `image build-version`)
    provider,
    reconciler,
    serve,
    token,
    verify,
)

app = typer.Typer(
    name="tl",
    help="trustedlaunch: Secure Boot, vTPM and remote attestation for Kubernetes node pools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's help layout (_WholeWordsHelp): Rich's table cuts option names
)

# Sub-apps register here, one line each (keep alphabetical):
app.add_typer(aks.aks_app, name="aks")  # with aks_upgrade's commands (get-upgrades, upgrade)
app.add_typer(alerts.alerts_app, name="alerts")
app.add_typer(attest.attest_app, name="attest")
app.add_typer(eventlog.eventlog_app, name="eventlog")
app.add_typer(feature.feature_app, name="feature")
app.add_typer(group.group_app, name="group")
app.add_typer(host.host_app, name="host")
app.add_typer(image.app, name="image")
app.add_typer(verify.policy_app, name="policy")
app.add_typer(provider.provider_app, name="provider")
app.add_typer(reconciler.reconciler_app, name="reconciler")
app.add_typer(token.token_app, name="token")
app.command(name="demo")(demo.demo)
app.command(name="serve")(serve.serve)


@app.command()
def version() -> None:
    """Print the trustedlaunch version."""
    typer.echo(__version__)


def _wrap(text: str, width: int) -> list[str]:
    """`text` as lines of at most `width` cells, broken only between words (a longer word overflows)."""
    text = " ".join(text.split())
    return textwrap.wrap(text, max(width, 20), break_long_words=False, break_on_hyphens=False)


class _WholeWordsHelp:
    """Help laid out as click lays it out (options in two columns, help below a name too long for its
    column) with every word kept whole: option names are never cut, and text wraps only between words, so
    an identifier such as `kubernetes.azure.com/upgrade-status` is never split at a hyphen."""

    help: str | None
    if TYPE_CHECKING:

        def get_params(self, ctx: Any) -> list[Any]: ...  # TyperCommand's and TyperGroup's

    def format_help_text(self, ctx: Any, formatter: Any) -> None:
        text = inspect.cleandoc(self.help or "")
        if not text:
            return
        formatter.write_paragraph()
        indent = " " * (formatter.current_indent + formatter.indent_increment)
        paragraphs = [
            "".join(f"{indent}{line}\n" for line in _wrap(paragraph, formatter.width - len(indent)))
            for paragraph in text.split("\n\n")
        ]
        formatter.write("\n".join(paragraphs))

    def format_options(self, ctx: Any, formatter: Any) -> None:
        records = [(param, param.get_help_record(ctx)) for param in self.get_params(ctx)]
        for title, kind in (("Arguments", "argument"), ("Options", "option")):
            rows = [record for param, record in records if record and param.param_type_name == kind]
            if rows:
                with formatter.section(title):
                    _write_rows(formatter, rows)


def _write_rows(formatter: Any, rows: list[tuple[str, str]], name_max: int = 30, spacing: int = 2) -> None:
    """(name, help) rows in two columns; a name longer than `name_max` gets its help on the next lines."""
    name_column = min(max(len(name) for name, _ in rows), name_max) + spacing
    indent = " " * formatter.current_indent
    help_indent = indent + " " * name_column
    for name, help_text in rows:
        lines = _wrap(help_text, formatter.width - len(help_indent))
        formatter.write(indent + name)
        if lines and len(name) + spacing <= name_column:
            formatter.write(" " * (name_column - len(name)) + lines.pop(0))
        formatter.write("\n" + "".join(f"{help_indent}{line}\n" for line in lines))


class _PlainHelpCommand(_WholeWordsHelp, TyperCommand):
    """A command whose help keeps words whole (_WholeWordsHelp)."""


class _PlainHelpGroup(_WholeWordsHelp, TyperGroup):
    """A command group whose help keeps words whole (_WholeWordsHelp), and whose command-line errors print
    as az's: `ERROR: message` on stderr, exit 2."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        super().format_options(ctx, formatter)
        self.format_commands(ctx, formatter)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        except typer.TyperException as error:  # Typer's click errors: usage, bad parameter, ...
            if type(error).__name__ != "NoArgsIsHelpError":  # that one printed the help already
                message = error.format_message() if hasattr(error, "format_message") else str(error)
                typer.echo(f"ERROR: {message}", err=True)
                context = getattr(error, "ctx", None)
                if context is not None:
                    typer.echo(f"Try '{context.command_path} --help' for help.", err=True)
            sys.exit(getattr(error, "exit_code", 1))
        sys.exit(result if isinstance(result, int) else 0)


def _plain_help(typer_app: typer.Typer, seen: set[int]) -> None:
    """Help as az shows it, for every command of `typer_app`: laid out by _WholeWordsHelp (whole option
    names, words never split, a flag such as `--enable-vtpm` without a value the parser would refuse), and
    a choice option lists "Allowed values: ..." in its help text instead of a `<A|B|C>` value."""
    typer_app.info.cls = _PlainHelpGroup
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = _PlainHelpCommand
        if command.callback is None:
            continue
        hints = get_type_hints(command.callback, include_extras=True)
        for parameter in inspect.signature(command.callback).parameters.values():
            annotation = hints.get(parameter.name)
            infos = [
                *(getattr(annotation, "__metadata__", ()) or ()),
                parameter.default,
            ]
            for info in infos:
                if not isinstance(info, OptionInfo) or id(info) in seen or info.metavar is not None:
                    continue
                seen.add(id(info))
                kind = _value_type(annotation)
                if isinstance(kind, type) and issubclass(kind, Enum):
                    info.metavar = "VALUE"
                    allowed = ", ".join(str(member.value) for member in kind)
                    info.help = f"{info.help or ''} Allowed values: {allowed}.".strip()
    for sub_app in typer_app.registered_groups:
        if sub_app.typer_instance is not None:
            _plain_help(sub_app.typer_instance, seen)


def _value_type(annotation: object) -> object:
    """The type an option's annotation takes (`Annotated[X | None, ...]` -> X)."""
    if hasattr(annotation, "__metadata__"):
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is not None:
        members = [member for member in get_args(annotation) if member is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


_plain_help(app, set())
