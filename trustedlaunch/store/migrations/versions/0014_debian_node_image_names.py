"""Debian node image names: the Linux node image is named for what it is, Debian's signed boot chain
(TLDebian<release>gen2[TL]containerd-202612.06.0, control.node_images.linux_image_version), not AKS's
Ubuntu or Azure Linux images. Every stored Linux image name of the AKS catalogue (AKSUbuntu-..., AKSAzure
Linux-...: gen2, Gen1, Arm64 and FIPS variants alike, since every node booted the same x64 UEFI image) becomes
the Debian name, trusted launch capable or not as it was, in node_images, agent_pools, nodes and
image_policies (and the image name inside each stored policy), so old pools keep working and keep whether
they may turn trusted launch on. Windows image names stay.

The names are frozen here as they were at this revision: the Debian release is the host's (its os-release:
the node image boots the host's Debian packages), read only when there is something to rename.

Revision ID: 0014_debian_node_image_names
Revises: 0013_pool_drain_timeout
Create Date: 2026-12-06 07:30:00.000000
"""

from __future__ import annotations

import platform
import re

import sqlalchemy as sa
from alembic import op

revision = "0014_debian_node_image_names"
down_revision = "0013_pool_drain_timeout"
branch_labels = None
depends_on = None

OLD_PREFIXES = ("AKSUbuntu-", "AKSAzureLinux-")
IMAGE_RELEASE = "202612.06.0"
# What downgrading names the Debian images: the AKS catalogue's Ubuntu gen2 images of the previous revision.
PREVIOUS_NAMES = {
    True: "AKSUbuntu-2204gen2TLcontainerd-202411.12.0",
    False: "AKSUbuntu-2204gen2containerd-202411.12.0",
}
REFERENCING_TABLES = ("agent_pools", "nodes")


def _debian_release() -> str:
    fields = platform.freedesktop_os_release()
    release = fields.get("VERSION_ID", "")
    if fields.get("ID") != "debian" or not re.fullmatch(r"\d{1,3}", release):
        raise RuntimeError(
            f"cannot name the Debian node image: the host's os-release names ID={fields.get('ID')!r} "
            f"VERSION_ID={release!r}, not a Debian stable release"
        )
    return release


def _debian_name(debian: str, trusted_launch: bool) -> str:
    return f"TLDebian{debian}gen2{'TL' if trusted_launch else ''}containerd-{IMAGE_RELEASE}"


def _rename(connection: sa.Connection, renames: dict[str, tuple[str, bool]], os_sku: str) -> None:
    """Rename node image `old` to `new` (trusted launch capable or not) everywhere, for each old -> (new,
    capable) of `renames`: the new row first, then the rows naming the old one, then the old row."""
    for new, capable in set(renames.values()):
        connection.execute(
            sa.text(
                "INSERT INTO node_images (version, os_type, os_sku, hyper_v_generation, architecture, "
                "trusted_launch_capable, fips) SELECT CAST(:new AS VARCHAR(128)), 'Linux', "
                "CAST(:sku AS VARCHAR(32)), 'V2', 'x64', :capable, :fips "
                "WHERE NOT EXISTS (SELECT 1 FROM node_images WHERE version = :new)"
            ),
            {"new": new, "sku": os_sku, "capable": capable, "fips": False},
        )
    for old, (new, _) in renames.items():
        names = {"old": old, "new": new, "old_quoted": f'"{old}"', "new_quoted": f'"{new}"'}
        for table in REFERENCING_TABLES:
            connection.execute(
                sa.text(f"UPDATE {table} SET node_image_version = :new WHERE node_image_version = :old"),
                names,
            )
        # one policy per image and Secure Boot setting: a policy the new name has already stays
        connection.execute(
            sa.text(
                "UPDATE image_policies SET node_image_version = :new, "
                "policy = replace(policy, :old_quoted, :new_quoted) WHERE node_image_version = :old "
                "AND NOT EXISTS (SELECT 1 FROM image_policies AS twin WHERE twin.node_image_version = :new "
                "AND twin.secure_boot = image_policies.secure_boot)"
            ),
            names,
        )
        connection.execute(sa.text("DELETE FROM image_policies WHERE node_image_version = :old"), names)
        connection.execute(sa.text("DELETE FROM node_images WHERE version = :old"), names)


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.text("SELECT version, trusted_launch_capable FROM node_images WHERE os_type = 'Linux'")
    ).all()
    old = [(version, bool(capable)) for version, capable in rows if version.startswith(OLD_PREFIXES)]
    if not old:
        return
    debian = _debian_release()
    _rename(
        connection,
        {version: (_debian_name(debian, capable), capable) for version, capable in old},
        f"Debian{debian}",
    )


def downgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.text("SELECT version, trusted_launch_capable FROM node_images WHERE version LIKE 'TLDebian%'")
    ).all()
    renames = {version: (PREVIOUS_NAMES[bool(capable)], bool(capable)) for version, capable in rows}
    _rename(connection, renames, "Ubuntu")
