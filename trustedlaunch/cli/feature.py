"""`tl feature`: register and inspect preview features (az feature compatible)."""

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

feature_app = typer.Typer(
    name="feature", help="Manage preview features (az feature compatible).", no_args_is_help=True
)

NamespaceOption = Annotated[str, typer.Option("--namespace", help="Resource provider namespace.")]
FeatureNameOption = Annotated[
    str, typer.Option("--name", "-n", help="Feature name, e.g. TrustedLaunchPreview.")
]
COLUMNS = ("Name", "RegistrationState")


def _row(feature: dict[str, Any]) -> list[object]:
    return [feature["name"], feature["properties"]["state"]]


def _path(subscription: str, namespace: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/providers/Microsoft.Features/providers/{segment(namespace)}"
        f"/features/{segment(name)}"
    )


@feature_app.command()
def register(
    namespace: NamespaceOption,
    name: FeatureNameOption,
    output_format: OutputOption = OutputFormat.json,
    endpoint: EndpointOption = None,
    subscription: SubscriptionOption = DEFAULT_SUBSCRIPTION,
) -> None:
    """Register a preview feature (Registering, then Registered)."""
    with connect(endpoint, subscription) as client:
        feature = client.json("POST", _path(client.subscription_id, namespace, name) + "/register")
    typer.echo(
        f"Once the feature '{name}' is registered, invoking 'tl provider register --namespace {namespace}' "
        "is required to get the change propagated",
        err=True,
    )
    output(feature, output_format, COLUMNS, _row)


@feature_app.command()
def show(
    namespace: NamespaceOption,
    name: FeatureNameOption,
    output_format: OutputOption = OutputFormat.json,
    endpoint: EndpointOption = None,
    subscription: SubscriptionOption = DEFAULT_SUBSCRIPTION,
) -> None:
    """Show a preview feature's registration state."""
    with connect(endpoint, subscription) as client:
        feature = client.json("GET", _path(client.subscription_id, namespace, name))
    output(feature, output_format, COLUMNS, _row)


@feature_app.command(name="list")
def list_features(
    namespace: Annotated[str | None, typer.Option("--namespace", help="Only this namespace.")] = None,
    output_format: OutputOption = OutputFormat.json,
    endpoint: EndpointOption = None,
    subscription: SubscriptionOption = DEFAULT_SUBSCRIPTION,
) -> None:
    """List preview features and their registration states."""
    with connect(endpoint, subscription) as client:
        root = f"/subscriptions/{client.subscription_id}/providers/Microsoft.Features"
        path = f"{root}/providers/{segment(namespace)}/features" if namespace else f"{root}/features"
        features = client.json("GET", path)
    output(features["value"], output_format, COLUMNS, _row)
