"""`tl token`: create, list and revoke API bearer tokens (admin tokens only), optionally scoped to a
subscription or a resource group."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustedlaunch.cli.arm import (
    DEFAULT_SUBSCRIPTION,
    EndpointOption,
    OutputFormat,
    OutputOption,
    connect,
    output,
)

token_app = typer.Typer(
    name="token", help="Manage API bearer tokens (needs an admin token).", no_args_is_help=True
)

TOKENS_PATH = "/providers/Microsoft.TrustedLaunch/tokens"
COLUMNS = ("Name", "Scope", "CreatedAt")
NameOption = Annotated[str, typer.Option("--name", "-n", help="Token name (letters, digits, '-', '_', '.').")]


def _row(token: dict[str, Any]) -> list[object]:
    properties = token["properties"]
    return [token["name"], properties["scope"] or "(admin)", properties["createdAt"]]


@token_app.command()
def create(
    name: NameOption,
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            help="/subscriptions/{id}, /subscriptions/{id}/resourceGroups/{name}, or "
            "/providers/Microsoft.TrustedLaunch/attestation (the verifier API only: for node agents and "
            "relying parties); omit for an admin token.",
        ),
    ] = None,
    output_format: OutputOption = OutputFormat.json,
    endpoint: EndpointOption = None,
) -> None:
    """Create a token; its plaintext (`properties.token`) is printed this once: store it now."""
    with connect(endpoint, DEFAULT_SUBSCRIPTION) as client:
        token = client.json("POST", TOKENS_PATH, json={"name": name, "scope": scope})
    typer.echo("The token is shown only once: store it now (use it as TL_TOKEN).", err=True)
    output(token, output_format, (*COLUMNS, "Token"), lambda t: [*_row(t), t["properties"]["token"]])


@token_app.command(name="list")
def list_tokens(output_format: OutputOption = OutputFormat.json, endpoint: EndpointOption = None) -> None:
    """List tokens (names, scopes and creation times; never the tokens themselves)."""
    with connect(endpoint, DEFAULT_SUBSCRIPTION) as client:
        tokens = client.json("GET", TOKENS_PATH)
    output(tokens["value"], output_format, COLUMNS, _row)


@token_app.command()
def revoke(name: NameOption, endpoint: EndpointOption = None) -> None:
    """Revoke a token: it stops working at once on the server that revokes it, within seconds elsewhere."""
    with connect(endpoint, DEFAULT_SUBSCRIPTION) as client:
        client.request("DELETE", f"{TOKENS_PATH}/{name}")
    typer.echo(f"Token '{name}' revoked.", err=True)
