"""The Linux node image is named for what it is (Debian's signed boot chain), every Linux osSKU AKS accepts
runs it, and migration 0014 renames the AKS image names older stores hold, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from alembic import command
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.api.models import OsSku as ApiOsSku
from trustedlaunch.cli.aks import OsSku as CliOsSku
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.labels import join_labels
from trustedlaunch.control.node_images import (
    LINUX_OS_SKUS,
    OS_SKUS,
    find_image,
    linux_image_version,
    node_images,
)
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.node.debian import DebianReleaseError, debian_release
from trustedlaunch.node.rootfs import os_release
from trustedlaunch.store.db import alembic_config, migrate
from trustedlaunch.store.models import AgentPool, ImagePolicy, Node, NodeImage

SUB = "00000000-0000-0000-0000-00000000e014"
LABEL_VALUE_MAX = 63
OLD_ARM64 = "AKSAzureLinux-V2gen2arm64containerd-202411.12.0"


def test_the_linux_image_is_named_for_the_hosts_debian_release() -> None:
    debian = debian_release()
    assert debian == Path("/etc/debian_version").read_text().split(".")[0]
    tl, plain = (linux_image_version(trusted_launch=capable, debian=debian) for capable in (True, False))
    assert (tl, plain) == (
        f"TLDebian{debian}gen2TLcontainerd-202612.06.0",
        f"TLDebian{debian}gen2containerd-202612.06.0",
    )
    assert [(i.version, i.trusted_launch_capable) for i in node_images() if i.os_type == "Linux"] == [
        (tl, True),
        (plain, False),
    ]
    assert all(len(image.version) <= LABEL_VALUE_MAX for image in node_images())
    assert not any(image.version.startswith(("AKSUbuntu", "AKSAzureLinux")) for image in node_images())
    assert 'PRETTY_NAME="trustedlaunch node (Debian 12 signed shim, GRUB and kernel;' in os_release("12")


@pytest.mark.parametrize(
    "fields",
    [
        {"ID": "ubuntu", "VERSION_ID": "24.04"},
        {"ID": "debian"},  # testing/unstable: no VERSION_ID
        {"ID": "debian", "VERSION_ID": "12; rm -rf"},
    ],
)
def test_a_host_that_is_not_debian_stable_has_no_node_image_name(fields: dict[str, str]) -> None:
    with pytest.raises(DebianReleaseError, match="not a Debian stable release"):
        debian_release(fields)


def test_every_aks_linux_os_sku_is_accepted_everywhere() -> None:
    assert set(LINUX_OS_SKUS) >= {
        "Ubuntu",
        "Ubuntu2204",
        "Ubuntu2404",
        "AzureLinux",
        "AzureLinux3",
        "CBLMariner",
        "Mariner",
    }
    everything = {sku for skus in OS_SKUS.values() for sku in skus}
    assert set(get_args(ApiOsSku)) == everything == {sku.value for sku in CliOsSku}


def test_every_linux_os_sku_gets_the_debian_image_and_keeps_its_sku(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        specs = [
            PoolSpec(f"p{index}", os_sku=sku, enable_secure_boot=True, enable_vtpm=True)
            for index, sku in enumerate(LINUX_OS_SKUS)
        ]
        cluster, _, _ = put_cluster(
            session, ResourcePath(SUB, "rg", "c"), ClusterSpec("eastus", agent_pools=specs)
        )
        pools = {pool.os_sku: pool.node_image_version for pool in cluster.agent_pools}
        labels = join_labels("p0", "System", pools["Mariner"], "Mariner", "Standard_D4s_v3", {})
    tl = linux_image_version(trusted_launch=True, debian=debian_release())
    assert pools == dict.fromkeys(LINUX_OS_SKUS, tl)
    assert labels["kubernetes.azure.com/node-image-version"] == tl
    assert labels["kubernetes.azure.com/os-sku"] == "Mariner"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    url = (
        f"sqlite:///{tmp_path / 'control.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgresql_url")
    )
    engine, sessions = open_store(url, tmp_path / "admin-token")
    yield engine, sessions
    engine.dispose()


def stored_versions(sessions: sessionmaker[Session]) -> dict[str, object]:
    with sessions() as session:
        return {
            # only the columns this migration knows (later ones add pool and node columns)
            "pools": {
                row.name: row.node_image_version
                for row in session.execute(select(AgentPool.name, AgentPool.node_image_version))
            },
            "nodes": {
                row.name: row.node_image_version
                for row in session.execute(select(Node.name, Node.node_image_version))
            },
            "policies": {
                (p.node_image_version, p.secure_boot): p.policy for p in session.scalars(select(ImagePolicy))
            },
            "images": {
                row.version: row.trusted_launch_capable
                for row in session.execute(select(NodeImage.version, NodeImage.trusted_launch_capable))
            },
        }


def test_the_migration_renames_the_aks_names_of_an_older_store(
    store: tuple[Engine, sessionmaker[Session]],
) -> None:
    """An older store's pools (trusted launch capable or not, an Arm64 variant), nodes and image policies
    get the Debian names, and its pools keep working: the catalogue knows their images again."""
    engine, sessions = store
    tl = linux_image_version(trusted_launch=True, debian=debian_release())
    plain = linux_image_version(trusted_launch=False, debian=debian_release())
    with sessions.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        specs = [
            PoolSpec("tl", count=1, enable_secure_boot=True, enable_vtpm=True),
            PoolSpec("fips", count=1, enable_fips=True),
            PoolSpec("arm", count=1, vm_size="Standard_D4pds_v5"),
        ]
        cluster, _, _ = put_cluster(
            session, ResourcePath(SUB, "rg", "c"), ClusterSpec("eastus", agent_pools=specs)
        )
        for pool in cluster.agent_pools:
            session.add(
                Node(
                    pool=pool,
                    ordinal=0,
                    name=f"{pool.name}-0",
                    node_image_version=pool.node_image_version,
                    state="Ready",
                )
            )
        session.add(ImagePolicy(node_image_version=tl, secure_boot=True, policy=f'{{"nodeImage": "{tl}"}}'))
    assert stored_versions(sessions)["pools"] == {"tl": tl, "fips": plain, "arm": plain}

    command.downgrade(alembic_config(engine), "0013_pool_drain_timeout")  # what an older store holds
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO node_images (version, os_type, os_sku, hyper_v_generation, architecture, "
                "trusted_launch_capable, fips) VALUES (:v, 'Linux', 'AzureLinux', 'V2', 'Arm64', :f, :f)"
            ),
            {"v": OLD_ARM64, "f": False},
        )
        for table, column in (("agent_pools", "name"), ("nodes", "name")):
            connection.execute(
                text(f"UPDATE {table} SET node_image_version = :v WHERE {column} LIKE 'arm%'"),
                {"v": OLD_ARM64},
            )
    old = stored_versions(sessions)
    assert old["pools"] == {
        "tl": "AKSUbuntu-2204gen2TLcontainerd-202411.12.0",
        "fips": "AKSUbuntu-2204gen2containerd-202411.12.0",
        "arm": OLD_ARM64,
    }
    assert old["policies"] == {
        (
            "AKSUbuntu-2204gen2TLcontainerd-202411.12.0",
            True,
        ): '{"nodeImage": "AKSUbuntu-2204gen2TLcontainerd-202411.12.0"}'
    }

    migrate(engine)
    new = stored_versions(sessions)
    assert new["pools"] == {"tl": tl, "fips": plain, "arm": plain}
    assert new["nodes"] == {"tl-0": tl, "fips-0": plain, "arm-0": plain}
    assert new["policies"] == {(tl, True): f'{{"nodeImage": "{tl}"}}'}
    assert new["images"] == {tl: True, plain: False}  # no Windows image is seeded any more
    assert all(find_image(str(version)) is not None for version in new["pools"].values())  # type: ignore[attr-defined]
