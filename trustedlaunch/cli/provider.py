"""`tl provider`: register and inspect resource providers (az provider compatible)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustedlaunch.cli.arm import (
    ApiTarget,
    OutputFormat,
    OutputOption,
    api_command,
    output,
)

provider_app = typer.Typer(
    name="provider", help="Manage resource providers (az provider compatible).", no_args_is_help=True
)

NamespaceOption = Annotated[str, typer.Option("--namespace", "-n", help="e.g. Microsoft.ContainerService.")]
COLUMNS = ("Namespace", "RegistrationState")


def _row(provider: dict[str, Any]) -> list[object]:
    return [provider["namespace"], provider["registrationState"]]


@api_command(provider_app)
def register(
    api: ApiTarget,
    namespace: NamespaceOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Register a resource provider (a Registering preview feature still waits its registration delay)."""
    with api.connect() as client:
        provider = client.json("POST", client.path(client.subscription.provider(namespace)) + "/register")
    output(provider, output_format, COLUMNS, _row)


@api_command(provider_app)
def show(
    api: ApiTarget,
    namespace: NamespaceOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Show a resource provider's registration state."""
    with api.connect() as client:
        provider = client.json("GET", client.path(client.subscription.provider(namespace)))
    output(provider, output_format, COLUMNS, _row)
