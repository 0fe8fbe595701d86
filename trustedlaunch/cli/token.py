"""`tl token`: create, list and revoke API bearer tokens (admin tokens only), optionally scoped to a
subscription or a resource group."""

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

token_app = typer.Typer(
    name="token", help="Manage API bearer tokens (needs an admin token).", no_args_is_help=True
)

TOKENS_PATH = "/providers/Microsoft.TrustedLaunch/tokens"
COLUMNS = ("Name", "Scope", "CreatedAt")
NameOption = Annotated[str, typer.Option("--name", "-n", help="Token name (letters, digits, '-', '_', '.').")]


def _row(token: dict[str, Any]) -> list[object]:
    properties = token["properties"]
    return [token["name"], properties["scope"] or "(admin)", properties["createdAt"]]


@api_command(token_app, subscription=False)
def create(
    api: ApiTarget,
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
) -> None:
    """Create a token; its plaintext (`properties.token`) is printed this once: store it now."""
    with api.connect() as client:
        token = client.json("POST", TOKENS_PATH, json={"name": name, "scope": scope})
    typer.echo("The token is shown only once: store it now (use it as TL_TOKEN).", err=True)
    output(token, output_format, (*COLUMNS, "Token"), lambda t: [*_row(t), t["properties"]["token"]])


@api_command(token_app, name="list", subscription=False)
def list_tokens(api: ApiTarget, output_format: OutputOption = OutputFormat.json) -> None:
    """List tokens (names, scopes and creation times; never the tokens themselves)."""
    with api.connect() as client:
        tokens = client.json("GET", TOKENS_PATH)
    output(tokens["value"], output_format, COLUMNS, _row)


@api_command(token_app, subscription=False)
def revoke(api: ApiTarget, name: NameOption) -> None:
    """Revoke a token: it stops working at once on the server that revokes it, within seconds elsewhere."""
    with api.connect() as client:
        client.request("DELETE", f"{TOKENS_PATH}/{name}")
    typer.echo(f"Token '{name}' revoked.", err=True)
