"""`tl alerts`: integrity alerts (Defender for Cloud shaped "VM attestation failure") and the webhook they
are delivered to, over the API's `Microsoft.Security` routes."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustedlaunch.cli.arm import (
    ApiTarget,
    ArmClient,
    OutputFormat,
    OutputOption,
    api_command,
    note,
    output,
)
from trustedlaunch.cli.output import Column
from trustedlaunch.store.vocabulary import AlertSeverity, AlertStatus

alerts_app = typer.Typer(
    name="alerts", help="Integrity alerts of failed attestations and their webhook.", no_args_is_help=True
)
webhook_app = typer.Typer(
    name="webhook", help="The URL the subscription's alerts are POSTed to.", no_args_is_help=True
)
alerts_app.add_typer(webhook_app, name="webhook")

ALERT_COLUMNS = (  # at 80 columns: Name, Severity, Status, FailedComponents (cli/output.py)
    Column("Name", priority=0),
    Column("Time", priority=5),
    Column("Severity", priority=1),
    Column("Status", priority=2),
    Column("Cluster", priority=6),
    Column("NodePool", priority=7),
    Column("Node", priority=4),
    Column("FailedComponents", prose=True, priority=3),
    Column("Count", priority=8),
    Column("LastSeen", priority=9),
)
WEBHOOK_COLUMNS = ("Url", "CreatedAt")


AlertIdOption = Annotated[
    str, typer.Option("--id", help="Alert name (a GUID) or its full id as `tl alerts list` prints it.")
]


SECURITY = "Microsoft.Security"


def _alerts_path(client: ArmClient) -> str:
    return client.path(client.subscription.provider(SECURITY)) + "/alerts"


def _alert_path(client: ArmClient, alert_id: str) -> str:
    name = alert_id.rstrip("/").rsplit("/", 1)[-1]
    return client.path(client.subscription.provider(SECURITY).child("alerts", name))


def _webhook_path(client: ArmClient) -> str:
    return client.path(client.subscription.provider(SECURITY)) + "/alertWebhook"


def _alert_row(alert: dict[str, Any]) -> list[object]:
    props = alert["properties"]
    extended = props.get("extendedProperties") or {}
    return [
        alert["name"],
        _to_the_second(props.get("timeGeneratedUtc")),
        props.get("severity"),
        props.get("status"),
        extended.get("cluster"),
        extended.get("nodePool"),
        props.get("compromisedEntity"),
        extended.get("failedComponents"),
        extended.get("count"),
        _to_the_second(props.get("endTimeUtc")),
    ]


def _to_the_second(moment: str | None) -> str | None:
    """An ISO time without its fraction of a second, for a narrower table (`-o json` keeps it)."""
    if moment is None or "." not in moment:
        return moment
    return moment.split(".", 1)[0] + ("Z" if moment.endswith("Z") else "")


def _webhook_row(webhook: dict[str, Any]) -> list[object]:
    return [webhook["properties"]["url"], webhook["properties"].get("createdAt")]


@api_command(alerts_app, name="list")
def list_alerts(
    api: ApiTarget,
    resource_group: Annotated[
        str | None, typer.Option("--resource-group", "-g", help="Only alerts of this resource group.")
    ] = None,
    cluster_name: Annotated[
        str | None, typer.Option("--cluster-name", help="Only alerts of this managed cluster.")
    ] = None,
    status: Annotated[
        AlertStatus | None, typer.Option("--status", help="Only Active, InProgress or Resolved.")
    ] = None,
    severity: Annotated[AlertSeverity | None, typer.Option("--severity", help="Only this severity.")] = None,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """List the subscription's integrity alerts, newest first."""
    params = {
        "resourceGroup": resource_group,
        "clusterName": cluster_name,
        "status": status.value if status else None,
        "severity": severity.value if severity else None,
    }
    with api.connect() as client:
        query = {key: value for key, value in params.items() if value is not None}
        alerts = client.json("GET", _alerts_path(client), params=query)
    output(alerts["value"], output_format, ALERT_COLUMNS, _alert_row)


@api_command(alerts_app)
def show(
    api: ApiTarget,
    alert_id: AlertIdOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Show one alert: severity, node, pool, time and every failed component."""
    with api.connect() as client:
        alert = client.json("GET", _alert_path(client, alert_id))
    output(alert, output_format, ALERT_COLUMNS, _alert_row)


def _change_state(api: ApiTarget, alert_id: str, action: str, output_format: OutputFormat) -> None:
    """POST the alert's `action` (resolve, acknowledge) and print the alert as it is then."""
    with api.connect() as client:
        path = _alert_path(client, alert_id)
        client.request("POST", f"{path}/{action}")
        alert = client.json("GET", path)
    output(alert, output_format, ALERT_COLUMNS, _alert_row)


@api_command(alerts_app)
def resolve(
    api: ApiTarget,
    alert_id: AlertIdOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Set an alert's status to Resolved and print it."""
    _change_state(api, alert_id, "resolve", output_format)


@api_command(alerts_app)
def acknowledge(
    api: ApiTarget,
    alert_id: AlertIdOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Acknowledge an Active alert (status InProgress) and print it."""
    _change_state(api, alert_id, "acknowledge", output_format)


@api_command(webhook_app, name="set")
def set_webhook(
    api: ApiTarget,
    url: Annotated[str, typer.Option("--url", help="https (or http) URL that receives each alert as JSON.")],
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Create or replace the alert webhook of the subscription."""
    with api.connect() as client:
        webhook = client.json("PUT", _webhook_path(client), json={"properties": {"url": url}})
    output(webhook, output_format, WEBHOOK_COLUMNS, _webhook_row)


@api_command(webhook_app, name="show")
def show_webhook(
    api: ApiTarget,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Show the alert webhook of the subscription."""
    with api.connect() as client:
        webhook = client.json("GET", _webhook_path(client))
    output(webhook, output_format, WEBHOOK_COLUMNS, _webhook_row)


@api_command(webhook_app, name="delete")
def delete_webhook(
    api: ApiTarget,
) -> None:
    """Remove the alert webhook (new alerts then stay Pending until a webhook is set)."""
    with api.connect() as client:
        response = client.request("DELETE", _webhook_path(client))
    what = "deleted" if response.status_code == 200 else "nothing to delete (none is configured)"
    note(f"Alert webhook: {what}.")
