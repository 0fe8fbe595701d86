"""Entry point of the `tl` command: one Typer app with a sub-app per area."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from enum import Enum
from typing import Any, get_args, get_origin, get_type_hints

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
)

# Sub-apps register here, one line each (keep alphabetical):
app.add_typer(aks.aks_app, name="aks")  # with aks_upgrade's commands (get-upgrades, upgrade)
app.add_typer(alerts.alerts_app, name="alerts")
app.add_typer(attest.attest_app, name="attest")
app.add_typer(eventlog.eventlog_app, name="eventlog")
app.add_typer(feature.feature_app, name="feature")
app.add_typer(group.group_app, name="group")
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


def _flags_without_values(params: list[Any]) -> list[Any]:
    """`params` with every flag's metavar emptied: Typer shows a `<bool>` value for flags otherwise."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _PlainHelpCommand(TyperCommand):
    """A command whose help shows no `<bool>` value for its flags (`--help` included)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_values(super().get_params(ctx))


class _PlainHelpGroup(TyperGroup):
    """A command group whose help shows no `<bool>` value for its flags (`--help` included), and whose
    command-line errors print as az's: `ERROR: message` on stderr, exit 2."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_values(super().get_params(ctx))

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
    """Help as az shows it, for every command of `typer_app`: a flag (`--enable-vtpm`, `--help`) shows no
    `<bool>` value that the parser would then refuse (the command classes above), a choice option lists
    "Allowed values: ..." in its help text (wrapped between words) instead of a `<A|B|C>` column split
    mid-word at 80 columns, and a docstring's lines are joined so that its sentences wrap at the terminal's
    width instead of breaking where the source's lines end."""
    typer_app.info.cls = _PlainHelpGroup
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = _PlainHelpCommand
        if command.callback is None:
            continue
        if command.help is None and command.callback.__doc__:  # one line per paragraph: wrapped to fit
            paragraphs = inspect.cleandoc(command.callback.__doc__).split("\n\n")
            command.help = "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)
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
