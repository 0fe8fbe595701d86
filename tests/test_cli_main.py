import typer
from typer.core import TyperCommand, TyperGroup
from typer.testing import CliRunner

from trustedlaunch import __version__
from trustedlaunch.cli.main import app


def test_version_prints_package_version() -> None:
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def _commands(group: TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], TyperCommand]]:
    found: list[tuple[tuple[str, ...], TyperCommand]] = []
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            found += _commands(command, (*prefix, name))
        else:
            found.append(((*prefix, name), command))
    return found


API_AREAS = {"aks", "alerts", "feature", "provider", "token"}


def test_every_api_command_takes_endpoint_and_subscription_last() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    api_commands = [(path, command) for path, command in _commands(root) if path[0] in API_AREAS]
    assert len(api_commands) >= 30
    for path, command in api_commands:
        options = {param.name: param for param in command.params}
        expected = ["endpoint"] if path[0] == "token" else ["endpoint", "subscription"]
        assert [param.name for param in command.params][-len(expected) :] == expected, path
        assert options["endpoint"].envvar == "TL_ENDPOINT", path
        if "subscription" in expected:
            assert options["subscription"].envvar == "TL_SUBSCRIPTION", path
        else:
            assert "subscription" not in options, path


def test_subscription_from_the_environment_is_checked_like_the_flag() -> None:
    result = CliRunner().invoke(
        app, ["alerts", "webhook", "show"], env={"TL_SUBSCRIPTION": "not-a-guid", "TL_ENDPOINT": None}
    )
    assert result.exit_code == 2
    assert "'not-a-guid' is not valid: a subscription id is a GUID" in result.output
