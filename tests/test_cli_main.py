from typer.testing import CliRunner

from trustedlaunch import __version__
from trustedlaunch.cli.main import app


def test_version_prints_package_version() -> None:
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__
