"""`TL_API_VERSION`: the CLI sends a Microsoft.ContainerService api-version of the user's choice (az has no
flag for it; its aks-preview extension is how az sends preview versions), checked against the server's table
before anything is sent and shown under --debug. A preview version needs TrustedLaunchPreview for trusted
launch, a GA version does not. Against a real server on loopback (no reconciler: `--no-wait`)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from trustedlaunch.api.api_versions import CONTAINER_SERVICE
from trustedlaunch.cli.main import app

GROUP = ["-g", "myResourceGroup"]
TRUSTED_LAUNCH = ["--enable-secure-boot", "--enable-vtpm", "--node-count", "1", "--no-wait"]
PREVIEW = "2023-11-02-preview"


def tl(runner: CliRunner, env: dict[str, str | None], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def create(runner: CliRunner, env: dict[str, str | None], name: str, *extra: str) -> tuple[int, str, str]:
    return tl(
        runner, env, "aks", "create", *GROUP, "-n", name, "--generate-ssh-keys", *TRUSTED_LAUNCH, *extra
    )


def test_an_unknown_api_version_is_refused_before_anything_is_sent(
    runner: CliRunner, cli_env: dict[str, str | None]
) -> None:
    for bad in ("2099-01-01", "abc", "2024-07-01-preview"):
        code, out, err = tl(runner, {**cli_env, "TL_API_VERSION": bad}, "aks", "list", "--debug")
        assert code == 2 and out == ""
        assert f"\nERROR: TL_API_VERSION: '{bad}' is not an api-version of Microsoft.ContainerService." in err
        assert f"The supported api-versions are '{CONTAINER_SERVICE.listed()}'." in err
        assert "HTTP Request" not in err  # nothing was sent


def test_preview_api_version_needs_the_registration_ga_does_not(
    runner: CliRunner, cli_env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TL_FEATURE_REGISTRATION_DELAY_SECONDS", "0")  # the in-process server's setting
    # GA, the default (the SDK's newest) and one named: trusted launch without TrustedLaunchPreview
    code, _, err = create(runner, cli_env, "gaDefault")
    assert code == 0, err
    ga = {**cli_env, "TL_API_VERSION": "2024-07-01"}
    code, _, err = create(runner, ga, "gaNamed", "--debug")
    assert code == 0, err
    assert "api-version 2024-07-01 for Microsoft.ContainerService (TL_API_VERSION)" in err
    assert "managedClusters/gaNamed?api-version=2024-07-01" in err

    preview = {**cli_env, "TL_API_VERSION": PREVIEW}
    code, _, err = create(runner, preview, "previewCluster", "--debug")
    assert code == 1
    assert f"managedClusters/previewCluster?api-version={PREVIEW}" in err
    assert "(PreviewFeatureNotRegistered)" in err and "TrustedLaunchPreview" in err
    code, _, _ = tl(runner, preview, "aks", "show", *GROUP, "-n", "previewCluster")
    assert code == 3  # nothing was created

    # the preview documentation's flow; features and providers keep their own namespaces' versions
    feature = ["--namespace", "Microsoft.ContainerService", "--name", "TrustedLaunchPreview"]
    code, _, err = tl(runner, preview, "feature", "register", *feature, "--debug")
    assert code == 0, err
    assert (
        "Microsoft.Features/providers/Microsoft.ContainerService/features/TrustedLaunchPreview/register"
        in err
    )
    code, out, _ = tl(runner, preview, "feature", "show", *feature)
    assert code == 0 and json.loads(out)["properties"]["state"] == "Registered"
    code, _, err = tl(runner, preview, "provider", "register", "--namespace", "Microsoft.ContainerService")
    assert code == 0, err

    code, out, err = create(runner, preview, "previewCluster")
    assert code == 0, err
    profile = json.loads(out)["properties"]["agentPoolProfiles"][0]
    assert profile["securityProfile"] == {"enableSecureBoot": True, "enableVTPM": True}
    assert "TL" in profile["nodeImageVersion"].split("gen2")[1]  # a trusted launch capable image
