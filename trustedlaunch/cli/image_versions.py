"""`tl image kernels`, `tl image versions` and `tl image build-version`: the operator's side of node image
versions (control.node_image_versions), on the server's store and state directory as `tl reconciler run`:
the Debian signed kernels a version can be built from, the versions there are, and a new version built from
another signed kernel, GRUB or shim that Debian serves (fetched, never installed on the host), its policy
predicted before any node boots it; `tl aks nodepool upgrade --node-image-only` then rolls pools onto the
latest."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from trustedlaunch.cli.arm import OutputFormat, OutputOption, fail, output
from trustedlaunch.cli.errors import bad_input
from trustedlaunch.cli.image import app

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option("--database-url", help="Store URL (default: TL_DATABASE_URL or the user data dir)."),
]
StateDirOption = Annotated[
    Path | None,
    typer.Option("--state-dir", help="The reconciler's state directory (default: the user data dir)."),
]
KERNEL_COLUMNS = ("Package", "Version", "Installed", "NodeImageVersion")
VERSION_COLUMNS = ("NodeImageVersion", "Kernel", "KernelVersion", "Shim", "Grub", "Kubernetes")


def _open(database_url: str | None) -> tuple[Engine, sessionmaker[Session]]:
    """The server's store (migrated), without an admin token: what `tl reconciler run` opens."""
    from trustedlaunch.control.bootstrap import open_store
    from trustedlaunch.errors import TrustedLaunchError

    try:
        return open_store(database_url, None)
    except TrustedLaunchError as exc:
        raise fail(str(exc), 2) from None


@app.command()
def kernels(
    database_url: DatabaseUrlOption = None,
    output_format: OutputOption = OutputFormat.table,
) -> None:
    """The Debian signed kernels (generic amd64) in apt's index, newest first: the installed one, and the
    node image version built from each, if any (`tl image build-version --kernel PACKAGE=VERSION`)."""
    from trustedlaunch.control.boot_packages import available_kernels, installed_kernel
    from trustedlaunch.control.node_image_versions import image_versions
    from trustedlaunch.errors import TrustedLaunchError

    engine, sessions = _open(database_url)
    try:
        with sessions() as session:
            built = {(b.kernel_package, b.kernel_version): name for name, b in image_versions(session)}
        installed = installed_kernel()
        found = [
            {
                "package": package,
                "version": version,
                "installed": (package, version) == (installed.package, installed.version),
                "nodeImageVersion": built.get((package, version)),
            }
            for package, version in available_kernels()
        ]
    except TrustedLaunchError as exc:
        raise fail(str(exc)) from None
    finally:
        engine.dispose()
    output(found, output_format, KERNEL_COLUMNS, lambda k: list(k.values()))


@app.command()
def versions(database_url: DatabaseUrlOption = None, output_format: OutputOption = OutputFormat.json) -> None:
    """The node image versions (trusted launch capable names), newest first, with what each is built from."""
    from trustedlaunch.control.node_image_versions import image_versions
    from trustedlaunch.errors import TrustedLaunchError

    engine, sessions = _open(database_url)
    try:
        with sessions() as session:
            found = [
                {"nodeImageVersion": name, **json.loads(b.to_json())} for name, b in image_versions(session)
            ]
    except TrustedLaunchError as exc:
        raise fail(str(exc)) from None
    finally:
        engine.dispose()

    def row(version: dict[str, str]) -> list[object]:
        keys = (
            "nodeImageVersion",
            "kernelPackage",
            "kernelVersion",
            "shimVersion",
            "grubVersion",
            "kubernetes",
        )
        return [version[key] for key in keys]

    output(found, output_format, VERSION_COLUMNS, row)


@app.command("build-version")
def build_version(
    kernel: Annotated[
        str | None,
        typer.Option(
            "--kernel",
            help="Debian signed kernel PACKAGE=VERSION (tl image kernels), e.g. "
            "linux-image-6.1.0-50-amd64=6.1.176-1 (default: the installed one).",
        ),
    ] = None,
    grub: Annotated[
        str | None, typer.Option("--grub", help="grub-efi-amd64-signed version (default: the installed one).")
    ] = None,
    shim: Annotated[
        str | None, typer.Option("--shim", help="shim-signed version (default: the installed one).")
    ] = None,
    database_url: DatabaseUrlOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Build a node image version from Debian's signed packages (fetched with apt-get download, checked
    against apt's signed index, never installed), store it and its policies predicted from its image (Secure
    Boot on and off) before any node boots it; print its build record. The same packages keep their name."""
    from trustedlaunch.control.node_image_versions import boot_chain, build_image_version, plan_build
    from trustedlaunch.control.reconciler import default_state_dir
    from trustedlaunch.errors import TrustedLaunchError

    package, version = None, None
    if kernel is not None:
        package, separator, version = kernel.partition("=")
        if not separator or not package or not version:
            raise bad_input(f"--kernel {kernel!r}: give the package and its version as PACKAGE=VERSION")
    images = (state_dir or default_state_dir()) / "images"
    engine, sessions = _open(database_url)
    try:
        with sessions.begin() as session:
            chain = boot_chain(package, version, grub_version=grub, shim_version=shim)
            name = plan_build(session, chain).version()
            images.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=images))
            try:
                build, _ = build_image_version(session, scratch / "image", chain)
                if not (images / name).exists():  # where the reconciler looks for it: no second build
                    os.rename(scratch / "image", images / name)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except TrustedLaunchError as exc:
        raise fail(str(exc)) from None
    finally:
        engine.dispose()
    typer.echo(
        json.dumps(
            {
                "nodeImageVersion": build.version(),
                "notTrustedLaunchCapable": build.version(trusted_launch=False),
                **json.loads(build.to_json()),
            },
            indent=2,
        )
    )
