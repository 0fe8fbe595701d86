"""`tl group`: create, show, list, delete resource groups and test their existence (az group compatible)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustedlaunch.cli.aks import (
    TagsOption,
    WaitCondition,
    confirm_or_exit,
    parse_tags,
    valid_group,
    wait_until,
)
from trustedlaunch.cli.arm import (
    DEFAULT_WAIT_SECONDS,
    POLL_SECONDS,
    ApiTarget,
    ArmClient,
    NoWaitOption,
    OutputFormat,
    OutputOption,
    TimeoutOption,
    api_command,
    fail,
    note,
    output,
)
from trustedlaunch.control.resource_id import ResourceId

group_app = typer.Typer(
    name="group", help="Manage resource groups (az group compatible).", no_args_is_help=True
)

GroupNameOption = Annotated[
    str,
    typer.Option(
        "--name", "-n", "--resource-group", "-g", help="Name of the resource group.", callback=valid_group
    ),
]
COLUMNS = ("Name", "Location", "Status")  # az's `group list -o table`


def _row(group: dict[str, Any]) -> list[object]:
    return [group["name"], group["location"], (group.get("properties") or {}).get("provisioningState")]


def _group_path(client: ArmClient, name: str) -> str:
    return client.path(ResourceId(client.subscription_id, name))


@api_command(group_app)
def create(
    api: ApiTarget,
    name: GroupNameOption,
    location: Annotated[str, typer.Option("--location", "-l", help="Location, e.g. eastus.")],
    tags: TagsOption = None,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Create a resource group, or update its tags (its location cannot change)."""
    body: dict[str, Any] = {"location": location}
    if tags is not None:
        body["tags"] = parse_tags(tags)
    with api.connect() as client:
        group = client.json("PUT", _group_path(client, name), json=body)
    output(group, output_format, COLUMNS, _row)


@api_command(group_app)
def show(api: ApiTarget, name: GroupNameOption, output_format: OutputOption = OutputFormat.json) -> None:
    """Show a resource group (exit 3 if it does not exist)."""
    with api.connect() as client:
        group = client.json("GET", _group_path(client, name))
    output(group, output_format, COLUMNS, _row)


@api_command(group_app, name="list")
def list_groups(api: ApiTarget, output_format: OutputOption = OutputFormat.json) -> None:
    """List the subscription's resource groups."""
    with api.connect() as client:
        groups = client.json("GET", client.path(client.subscription) + "/resourceGroups")["value"]
    output(groups, output_format, COLUMNS, _row)


@api_command(group_app)
def exists(api: ApiTarget, name: GroupNameOption) -> None:
    """Print whether a resource group exists: true or false (exit 0 either way, as az)."""
    with api.connect() as client:
        response = client.http.request("HEAD", _group_path(client, name))
    if response.status_code not in (204, 404):
        raise fail(f"cannot tell whether resource group '{name}' exists: HTTP {response.status_code}")
    typer.echo("true" if response.status_code == 204 else "false")


@api_command(group_app)
def delete(
    api: ApiTarget,
    name: GroupNameOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not prompt for confirmation.")] = False,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
) -> None:
    """Delete a resource group and every managed cluster in it; without --no-wait, wait until the group is
    gone (exit 1 when a cluster's deletion failed and the group is Succeeded again, or after --timeout)."""
    confirm_or_exit(yes, f"delete resource group {name} and every cluster in it")
    with api.connect() as client:
        response = client.request("DELETE", _group_path(client, name))
        if response.status_code == 204:
            note(f"Deleting resource group {name}: nothing to delete (it does not exist).")
        elif response.status_code == 202 and not no_wait:
            # the group itself, until it is gone: the 202's Location follows only one of its clusters' Deletes
            until_gone = WaitCondition(deleted=True, while_deleting=True)
            wait_until(
                client, _group_path(client, name), f"resource group {name}", until_gone, POLL_SECONDS, timeout
            )
