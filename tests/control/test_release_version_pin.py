"""A node image version name follows the bytes: IMAGE_RELEASE records what it was built from when the store
first knew it (the installed boot chain then), so after apt upgrades the host's kernel the installed chain
makes a version of its own (the latest, never older than IMAGE_RELEASE), while IMAGE_RELEASE keeps naming,
and being rebuilt from, its own packages (fetched from Debian when no longer the installed ones); a node
image upgrade then moves pools onto the new name, stored as it is first needed (by a new pool, which gets the
latest version, or by that upgrade)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from debian_boot_packages import OTHER_KERNEL
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.node_image_upgrades import upgrade_node_image_version, upgrade_profile
from trustedlaunch.control.node_image_versions import (
    boot_chain,
    image_versions,
    plan_build,
    register_build,
    release_build,
    store_version,
    version_boot_chain,
)
from trustedlaunch.control.node_images import IMAGE_RELEASE, installed_boot_chain
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster, put_pool
from trustedlaunch.store.models import AgentPool, NodeImage

SUB = "11111111-2222-3333-4444-555555555555"


def test_the_store_records_what_image_release_is_built_from(sessions: sessionmaker[Session]) -> None:
    installed = installed_boot_chain()
    with sessions() as session:
        pinned = release_build(session)
        assert pinned is not None and pinned.release == IMAGE_RELEASE
        assert (pinned.kernel_package, pinned.kernel_version) == (
            installed.kernel.package,
            installed.kernel.version,
        )
        assert plan_build(session, installed) == pinned
        chain = version_boot_chain(session, pinned.version())
        assert chain is not None and chain.record() == installed.record()


def test_after_an_apt_upgrade_the_installed_chain_is_a_new_latest_version(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        pinned = release_build(session)
        assert pinned is not None
        spec = PoolSpec("nodepool1", count=1, vm_size="Standard_D4s_v3")
        cluster, create, _ = put_cluster(
            session,
            ResourcePath(SUB, "rg", "c1"),
            ClusterSpec("eastus", agent_pools=[spec]),
            preview=True,  # a preview api-version, TrustedLaunchPreview unregistered: not TL capable
        )
        session.flush()
        finish_operation(session, create, "Succeeded")
        assert cluster.agent_pools[0].node_image_version == pinned.version(trusted_launch=False)
        # as if the host had linux-image-6.1.0-50-amd64 6.1.176-1 when the store was first opened (and the
        # pool was created), and apt upgraded it to the installed kernel since
        earlier = replace(
            pinned,
            kernel_package=OTHER_KERNEL[0],
            kernel_version=OTHER_KERNEL[1],
            kernel_release="6.1.0-50-amd64",
        )
        register_build(session, earlier)
    with sessions.begin() as session:
        installed = plan_build(session, installed_boot_chain())
        assert installed.release != IMAGE_RELEASE and installed.release > IMAGE_RELEASE
        assert installed.release.startswith("202612.06.")  # the installed kernel is older than this release
        assert plan_build(session, boot_chain(*OTHER_KERNEL)).release == IMAGE_RELEASE  # its own packages
        chain = version_boot_chain(session, pinned.version())
        assert chain is not None and chain.kernel.package == OTHER_KERNEL[0]  # rebuilt from them
        versions = image_versions(session)
        assert [build.release for _, build in versions] == [installed.release, IMAGE_RELEASE]
        assert session.get(NodeImage, installed.version()) is None  # not stored until first needed
        # a new pool gets it (stored then); the pool created before keeps IMAGE_RELEASE until upgraded
        spec = PoolSpec("second", count=1, vm_size="Standard_D4s_v3")
        second, _, _ = put_pool(session, ResourcePath(SUB, "rg", "c1"), spec, preview=True)
        assert second.node_image_version == installed.version(trusted_launch=False)
        assert session.get(NodeImage, installed.version()) is not None
        pool = session.get_one(AgentPool, cluster.agent_pools[0].id)
        assert pool.node_image_version == pinned.version(trusted_launch=False)
        pool, _ = upgrade_node_image_version(session, ResourcePath(SUB, "rg", "c1"), "nodepool1")
        assert pool.node_image_version == installed.version(trusted_launch=False)


def test_the_upgrade_profile_reports_the_latest_version_without_storing_it(
    sessions: sessionmaker[Session],
) -> None:
    path = ResourcePath(SUB, "rg", "c1")
    with sessions.begin() as session:
        pinned = release_build(session)
        assert pinned is not None
        spec = ClusterSpec("eastus", agent_pools=[PoolSpec("nodepool1", count=1, vm_size="Standard_D4s_v3")])
        put_cluster(session, path, spec, preview=True)
        earlier = replace(pinned, kernel_package=OTHER_KERNEL[0], kernel_version=OTHER_KERNEL[1])
        register_build(session, earlier)  # apt upgraded the host's kernel since, as above
    with sessions() as session:
        installed = plan_build(session, installed_boot_chain())
        profile = upgrade_profile(session, path, "nodepool1")
        assert profile.latest_node_image_version == installed.version(trusted_launch=False)
        assert not session.new and not session.dirty
        assert session.get(NodeImage, installed.version(trusted_launch=False)) is None  # a GET writes nothing


def test_two_transactions_storing_a_version_at_once_both_succeed(store: sessionmaker[Session]) -> None:
    with store() as session:
        pinned = release_build(session)
    assert pinned is not None
    build = replace(pinned, release="209901.01.0", kernel_version="9.9.9-1")
    raised: list[BaseException] = []

    def second() -> None:
        try:
            with store.begin() as session:
                store_version(session, build)
        except BaseException as error:  # the test reads it
            raised.append(error)

    with store.begin() as session:
        store_version(session, build)
        session.flush()
        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        time.sleep(0.5)  # the second inserts too and waits for this transaction
    thread.join(30)
    assert not thread.is_alive() and not raised
    with store() as session:
        for capable in (True, False):
            row = session.get(NodeImage, build.version(trusted_launch=capable))
            assert row is not None and row.build_record == build.to_json()
