"""`tl feature`: register and inspect preview features (az feature compatible)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustedlaunch.cli.arm import (
    ApiTarget,
    ArmClient,
    OutputFormat,
    OutputOption,
    api_command,
    output,
    warn,
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


FEATURES = "Microsoft.Features"


def _path(client: ArmClient, namespace: str, name: str) -> str:
    features = client.subscription.provider(FEATURES)
    return client.path(features.child("providers", namespace).child("features", name))


@api_command(feature_app)
def register(
    api: ApiTarget,
    namespace: NamespaceOption,
    name: FeatureNameOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Register a preview feature (Registering, then Registered)."""
    with api.connect() as client:
        feature = client.json("POST", _path(client, namespace, name) + "/register")
    warn(
        f"Once the feature '{name}' is registered, invoking 'tl provider register --namespace {namespace}' "
        "is required to get the change propagated"
    )
    output(feature, output_format, COLUMNS, _row)


@api_command(feature_app)
def show(
    api: ApiTarget,
    namespace: NamespaceOption,
    name: FeatureNameOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Show a preview feature's registration state."""
    with api.connect() as client:
        feature = client.json("GET", _path(client, namespace, name))
    output(feature, output_format, COLUMNS, _row)


@api_command(feature_app, name="list")
def list_features(
    api: ApiTarget,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Only this namespace.")] = None,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """List preview features and their registration states."""
    with api.connect() as client:
        provider = client.subscription.provider(FEATURES)
        scope = provider.child("providers", namespace) if namespace else provider
        features = client.json("GET", client.path(scope) + "/features")
    output(features["value"], output_format, COLUMNS, _row)
