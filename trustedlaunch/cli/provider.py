"""`tl provider`: register and inspect resource providers (az provider compatible)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustedlaunch.cli.arm import (
    DEFAULT_SUBSCRIPTION,
    EndpointOption,
    OutputFormat,
    OutputOption,
    SubscriptionOption,
    connect,
    output,
    segment,
)

provider_app = typer.Typer(
    name="provider", help="Manage resource providers (az provider compatible).", no_args_is_help=True
)

NamespaceOption = Annotated[str, typer.Option("--namespace", "-n", help="e.g. Microsoft.ContainerService.")]
COLUMNS = ("Namespace", "RegistrationState")


def _row(provider: dict[str, Any]) -> list[object]:
    return [provider["namespace"], provider["registrationState"]]


@provider_app.command()
def register(
    namespace: NamespaceOption,
    output_format: OutputOption = OutputFormat.json,
    endpoint: EndpointOption = None,
    subscription: SubscriptionOption = DEFAULT_SUBSCRIPTION,
) -> None:
    """Register a resource provider; propagates its Registering preview features to Registered."""
    with connect(endpoint, subscription) as client:
        provider = client.json(
            "POST", f"/subscriptions/{client.subscription_id}/providers/{segment(namespace)}/register"
        )
    output(provider, output_format, COLUMNS, _row)


@provider_app.command()
def show(
    namespace: NamespaceOption,
    output_format: OutputOption = OutputFormat.json,
    endpoint: EndpointOption = None,
    subscription: SubscriptionOption = DEFAULT_SUBSCRIPTION,
) -> None:
    """Show a resource provider's registration state."""
    with connect(endpoint, subscription) as client:
        provider = client.json(
            "GET", f"/subscriptions/{client.subscription_id}/providers/{segment(namespace)}"
        )
    output(provider, output_format, COLUMNS, _row)
