"""Cluster/pool services, the preview gate and long-running operations on a real SQLite store."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.features import (
    DELAY_ENV,
    get_feature,
    get_provider,
    list_features,
    register_feature,
    register_provider,
    registration_delay,
    trusted_launch_registered,
)
from trustedlaunch.control.limits import DEFAULT_KUBERNETES_VERSION, MAX_AGENT_POOLS
from trustedlaunch.control.node_images import find_image
from trustedlaunch.control.operations import RECONCILER_NOTE, finish_operation, get_operation
from trustedlaunch.control.resources import (
    ClusterSpec,
    PoolSpec,
    ResourcePath,
    delete_cluster,
    delete_pool,
    find_cluster,
    get_cluster,
    get_pool,
    kubernetes_versions,
    list_clusters,
    put_cluster,
    put_pool,
)
from trustedlaunch.store.models import FeatureRegistration, Operation, utc_now

SUB = "11111111-2222-3333-4444-555555555555"


def image_is_tl_capable(version: str) -> bool:
    image = find_image(version)
    assert image is not None, version
    return image.trusted_launch_capable


PATH = ResourcePath(SUB, "myResourceGroup", "myAKSCluster")
NS, FEATURE = "Microsoft.ContainerService", "TrustedLaunchPreview"
INSTALLED_MINOR = DEFAULT_KUBERNETES_VERSION.rsplit(".", 1)[0]  # "1.36": the newest installed 1.36 patch


def register_trusted_launch(sessions: sessionmaker[Session]) -> None:
    """Register TrustedLaunchPreview as if its registration delay had passed, and the provider."""
    with sessions.begin() as session:
        register_feature(session, SUB, NS, FEATURE)
        register_provider(session, SUB, NS)
    with sessions.begin() as session:
        record = session.get(FeatureRegistration, (SUB, NS, FEATURE))
        assert record is not None and record.requested_at is not None
        record.requested_at -= registration_delay()


def create_cluster(sessions: sessionmaker[Session], preview: bool = False, **pool: object) -> None:
    with sessions.begin() as session:
        put_cluster(
            session,
            PATH,
            ClusterSpec(location="eastus", agent_pools=[PoolSpec(name="nodepool1", **pool)]),  # type: ignore[arg-type]
            preview=preview,
        )


def test_feature_goes_registering_then_registered_after_its_delay_only(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        assert get_feature(session, SUB, NS, FEATURE).state == "NotRegistered"
        assert (
            register_feature(session, SUB, "microsoft.containerservice", "trustedlaunchpreview").state
            == "Registering"
        )
    with sessions.begin() as session:
        assert get_feature(session, SUB, NS, FEATURE).state == "Registering"
        assert not trusted_launch_registered(session, SUB)
        assert get_provider(session, SUB, NS).state == "NotRegistered"
        assert register_provider(session, SUB, NS).state == "Registered"
    with sessions() as session:  # as on Azure, the provider's registration does not hurry the feature
        assert get_feature(session, SUB, NS, FEATURE).state == "Registering"
    register_trusted_launch(sessions)  # its delay passed
    with sessions() as session:
        assert get_feature(session, SUB, NS, FEATURE).state == "Registered"
        assert [f.name for f in list_features(session, SUB, NS)] == [FEATURE]
        assert trusted_launch_registered(session, SUB)
        assert not trusted_launch_registered(session, "99999999-2222-3333-4444-555555555555")


def test_feature_registers_by_itself_after_the_delay(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DELAY_ENV, "30")
    with sessions.begin() as session:
        register_feature(session, SUB, NS, FEATURE)
    with sessions.begin() as session:
        record = session.get(FeatureRegistration, (SUB, NS, FEATURE))
        assert record is not None
        record.requested_at = utc_now() - timedelta(seconds=31)
    with sessions.begin() as session:
        assert get_feature(session, SUB, NS, FEATURE).state == "Registered"


def test_unknown_feature_and_bad_namespace(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, pytest.raises(ArmError) as raised:
        register_feature(session, SUB, NS, "NoSuchPreview")
    assert raised.value.status == 404 and raised.value.code == "FeatureNotFound"
    with sessions() as session, pytest.raises(ArmError) as raised:
        register_provider(session, SUB, "not a namespace")
    assert raised.value.status == 400 and raised.value.code == "InvalidResourceNamespace"


def test_trusted_launch_before_registration_names_the_command(sessions: sessionmaker[Session]) -> None:
    spec = ClusterSpec(location="eastus", agent_pools=[PoolSpec(name="np1", enable_secure_boot=True)])
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_cluster(session, PATH, spec, preview=True)
    error = raised.value
    assert (error.status, error.code) == (400, "PreviewFeatureNotRegistered")
    assert error.target == "properties.agentPoolProfiles[0].securityProfile"
    assert (
        "tl feature register --namespace Microsoft.ContainerService --name TrustedLaunchPreview"
        in error.message
    )
    with sessions() as session:
        assert find_cluster(session, PATH) is None
    with sessions.begin() as session:  # a GA api-version needs no registration
        cluster, _operation, created = put_cluster(session, PATH, spec)
        assert created and cluster.agent_pools[0].enable_secure_boot


def test_create_cluster_with_trusted_launch_after_registration(sessions: sessionmaker[Session]) -> None:
    register_trusted_launch(sessions)
    create_cluster(sessions, enable_secure_boot=True, enable_vtpm=True, vm_size="Standard_D4s_v3")
    with sessions() as session:
        cluster = get_cluster(
            session, ResourcePath(SUB, "MYRESOURCEGROUP", "myakscluster")
        )  # case-insensitive
        assert cluster.display_name == "myAKSCluster" and cluster.provisioning_state == "Creating"
        (pool,) = cluster.agent_pools
        assert (pool.mode, pool.count, pool.enable_secure_boot, pool.enable_vtpm) == ("System", 3, True, True)
        assert image_is_tl_capable(pool.node_image_version)
        assert pool.os_disk_type == "Managed"  # D4s_v3: 100 GiB of cache < 128 GiB disk + 1 GiB guest state
        assert [c.name for c in list_clusters(session, SUB, "myresourcegroup")] == ["myakscluster"]


def test_pool_created_before_registration_stays_on_a_non_tl_image(sessions: sessionmaker[Session]) -> None:
    create_cluster(sessions, preview=True)
    register_trusted_launch(sessions)
    with sessions.begin() as session:
        pool = get_pool(session, PATH, "nodepool1")
        assert not image_is_tl_capable(pool.node_image_version)
        finish_operation(session, get_operation(session, SUB, only_operation_id(session)), "Succeeded")
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_pool(session, PATH, PoolSpec(name="nodepool1", enable_vtpm=True), preview=True)
    assert raised.value.code == "TrustedLaunchIncompatibleWithConfig"
    assert raised.value.target == "properties.securityProfile"
    # A new pool created after registration gets the TL image and can enable trusted launch.
    with sessions.begin() as session:
        pool, operation, created = put_pool(
            session, PATH, PoolSpec(name="tlpool", enable_secure_boot=True, enable_vtpm=True), preview=True
        )
        assert created and image_is_tl_capable(pool.node_image_version)
        assert operation.status == "InProgress" and operation.note == RECONCILER_NOTE
        assert operation.resource_id.endswith("/managedClusters/myakscluster/agentPools/tlpool")


def only_operation_id(session: Session) -> str:
    return session.scalars(select(Operation.id)).one()


def test_pool_update_while_in_progress_is_refused_then_allowed(sessions: sessionmaker[Session]) -> None:
    register_trusted_launch(sessions)
    create_cluster(sessions)
    with sessions.begin() as session:
        finish_operation(session, get_operation(session, SUB, only_operation_id(session)), "Succeeded")
    with sessions.begin() as session:
        _pool, operation, _ = put_pool(session, PATH, PoolSpec(name="userpool", count=1))
        operation_id = operation.id
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_pool(session, PATH, PoolSpec(name="userpool", count=2))
    assert (raised.value.status, raised.value.code) == (409, "OperationNotAllowed")
    assert operation_id in raised.value.message
    with sessions.begin() as session:
        finish_operation(session, get_operation(session, SUB, operation_id), "Succeeded")
    with sessions.begin() as session:
        pool = get_pool(session, PATH, "userpool")
        assert pool.provisioning_state == "Succeeded"
        pool, update, created = put_pool(session, PATH, PoolSpec(name="userpool", count=2, enable_vtpm=True))
        assert not created and update.kind == "Update"
        assert (pool.count, pool.enable_vtpm, pool.provisioning_state) == (2, True, "Updating")


def test_a_cluster_and_its_pools_have_one_operation_at_a_time(sessions: sessionmaker[Session]) -> None:
    """Two operations on one pool would take each other's nodes (a soaking node drained anew, or deleted
    before its soak's end): a cluster update is refused while one of its pools has an operation in progress,
    a pool update while its cluster has one."""
    create_cluster(sessions)
    with sessions.begin() as session:
        created = get_operation(session, SUB, only_operation_id(session))
        with pytest.raises(ArmError) as raised:
            put_pool(session, PATH, PoolSpec(name="nodepool1", count=2))
        assert (raised.value.status, raised.value.code) == (409, "OperationNotAllowed")
        assert created.id in raised.value.message and "Managed cluster 'myAKSCluster'" in raised.value.message
        finish_operation(session, created, "Succeeded")
    with sessions.begin() as session:
        _pool, pool_update, _ = put_pool(session, PATH, PoolSpec(name="nodepool1", count=2))
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_cluster(session, PATH, ClusterSpec(location="eastus", tags={"team": "a"}))
    assert (raised.value.status, raised.value.code) == (409, "OperationNotAllowed")
    assert pool_update.id in raised.value.message and "Agent pool 'nodepool1'" in raised.value.message


def test_add_existing_pool_with_create_only_is_a_conflict(sessions: sessionmaker[Session]) -> None:
    create_cluster(sessions)
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_pool(session, PATH, PoolSpec(name="nodepool1"), create_only=True)
    assert (raised.value.status, raised.value.code) == (409, "DuplicateAgentPoolName")


def test_duplicate_pool_names_in_one_cluster_request(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        pools = [PoolSpec(name="np1"), PoolSpec(name="np1"), PoolSpec(name="BAD")]
        put_cluster(session, PATH, ClusterSpec(location="eastus", agent_pools=pools))
    details = [(d.code, d.target) for d in raised.value.details]
    assert details == [
        ("DuplicateAgentPoolName", "properties.agentPoolProfiles[1].name"),
        ("InvalidParameter", "properties.agentPoolProfiles[2].name"),
    ]
    assert raised.value.status == 400  # mixed statuses answer 400


def test_cluster_update_adds_and_updates_pools(sessions: sessionmaker[Session]) -> None:
    register_trusted_launch(sessions)
    create_cluster(sessions)
    with sessions.begin() as session:
        finish_operation(session, get_operation(session, SUB, only_operation_id(session)), "Succeeded")
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        pools = [PoolSpec(name="nodepool1", count=5), PoolSpec(name="extra"), PoolSpec(name="extra")]
        put_cluster(session, PATH, ClusterSpec(location="eastus", agent_pools=pools))
    assert [(d.code, d.target) for d in raised.value.details] == [
        ("DuplicateAgentPoolName", "properties.agentPoolProfiles[2].name")
    ]
    with sessions.begin() as session:
        pools = [PoolSpec(name="nodepool1", count=5), PoolSpec(name="extra", enable_vtpm=True)]
        spec = ClusterSpec(location="eastus", kubernetes_version=INSTALLED_MINOR, agent_pools=pools)
        cluster, operation, created = put_cluster(session, PATH, spec)
        assert not created and operation.kind == "Update" and cluster.provisioning_state == "Updating"
        assert cluster.kubernetes_version == INSTALLED_MINOR
        assert [(p.name, p.count, p.enable_vtpm) for p in cluster.agent_pools] == [
            ("nodepool1", 5, False),
            ("extra", 3, True),
        ]
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_cluster(session, PATH, ClusterSpec(location="eastus"))
    assert (raised.value.status, raised.value.code) == (409, "OperationNotAllowed")


def test_new_clusters_and_pools_default_to_the_installed_version(sessions: sessionmaker[Session]) -> None:
    create_cluster(sessions)
    with sessions.begin() as session:
        cluster = get_cluster(session, PATH)
        assert cluster.kubernetes_version == DEFAULT_KUBERNETES_VERSION
        assert cluster.agent_pools[0].orchestrator_version == DEFAULT_KUBERNETES_VERSION
        finish_operation(session, get_operation(session, SUB, only_operation_id(session)), "Succeeded")
    with sessions.begin() as session:
        pool, _operation, _created = put_pool(session, PATH, PoolSpec(name="minor", count=1))
        assert pool.orchestrator_version == DEFAULT_KUBERNETES_VERSION
    assert kubernetes_versions(SUB, "West Europe") == (DEFAULT_KUBERNETES_VERSION,)
    with pytest.raises(ArmError) as raised:
        kubernetes_versions(SUB, "mars")
    assert (raised.value.code, raised.value.target) == ("LocationNotAvailableForResourceType", "location")


def test_versions_that_are_not_installed_are_refused(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        pools = [PoolSpec(name="np1"), PoolSpec(name="np2", orchestrator_version="1.29.0")]
        put_cluster(
            session, PATH, ClusterSpec(location="eastus", kubernetes_version="1.30.6", agent_pools=pools)
        )
    assert [(d.code, d.target) for d in raised.value.details] == [  # np1 inherits 1.30.6: refused once
        ("K8sVersionNotSupported", "properties.kubernetesVersion"),
        ("AgentPoolK8sVersionNotSupported", "properties.agentPoolProfiles[1].orchestratorVersion"),
    ]
    create_cluster(sessions, orchestrator_version=INSTALLED_MINOR)
    with sessions.begin() as session:
        finish_operation(session, get_operation(session, SUB, only_operation_id(session)), "Succeeded")
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        older_patch = f"{INSTALLED_MINOR}.0"  # not installed (the pinned release is a later patch)
        put_pool(session, PATH, PoolSpec(name="nodepool1", orchestrator_version=older_patch))
    assert (raised.value.code, raised.value.target) == (
        "AgentPoolK8sVersionNotSupported",
        "properties.orchestratorVersion",
    )
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_pool(session, PATH, PoolSpec(name="newpool", orchestrator_version="1.29"))
    assert raised.value.code == "AgentPoolK8sVersionNotSupported" and "'newpool'" in raised.value.message


def test_a_cluster_recorded_on_a_version_no_longer_installed(sessions: sessionmaker[Session]) -> None:
    """Requests that keep its version pass; a new pool inheriting it is refused until the cluster upgrades."""
    create_cluster(sessions)
    with sessions.begin() as session:
        finish_operation(session, get_operation(session, SUB, only_operation_id(session)), "Succeeded")
        cluster = get_cluster(session, PATH)
        cluster.kubernetes_version = cluster.agent_pools[0].orchestrator_version = "1.30.6"
    with sessions.begin() as session:
        spec = ClusterSpec(location="eastus", kubernetes_version="1.30.6", tags={"team": "a"})
        _cluster, operation, _created = put_cluster(session, PATH, spec)
        finish_operation(session, operation, "Succeeded")
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_pool(session, PATH, PoolSpec(name="extra"))
    assert raised.value.code == "AgentPoolK8sVersionNotSupported" and "Version 1.30.6" in raised.value.message
    with sessions.begin() as session:
        spec = ClusterSpec(location="eastus", kubernetes_version=DEFAULT_KUBERNETES_VERSION)
        cluster, _operation, _created = put_cluster(session, PATH, spec)
        assert cluster.kubernetes_version == DEFAULT_KUBERNETES_VERSION


def test_virtual_nodes_on_a_cluster_with_trusted_launch_pools(sessions: sessionmaker[Session]) -> None:
    register_trusted_launch(sessions)
    create_cluster(sessions, enable_vtpm=True)
    with sessions.begin() as session:
        finish_operation(session, get_operation(session, SUB, only_operation_id(session)), "Succeeded")
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_cluster(session, PATH, ClusterSpec(location="eastus", virtual_nodes=True))
    assert (raised.value.code, raised.value.target) == (
        "TrustedLaunchIncompatibleWithConfig",
        "properties.agentPoolProfiles[0].addonProfiles.aciConnectorLinux",
    )


def test_system_pool_rules_on_create_update_and_delete(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_cluster(
            session, PATH, ClusterSpec(location="eastus", agent_pools=[PoolSpec(name="np1", mode="User")])
        )
    assert (raised.value.code, raised.value.target) == ("SystemPoolRequired", "properties.agentPoolProfiles")
    create_cluster(sessions)
    with sessions.begin() as session:
        finish_operation(session, get_operation(session, SUB, only_operation_id(session)), "Succeeded")
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        delete_pool(session, PATH, "nodepool1")
    assert (raised.value.status, raised.value.code) == (400, "SystemPoolRequired")
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_pool(session, PATH, PoolSpec(name="nodepool1", mode="User"))
    assert (raised.value.code, raised.value.target) == ("SystemPoolRequired", "properties.mode")
    with sessions.begin() as session:
        put_pool(session, PATH, PoolSpec(name="sys2", mode="System", count=1))
    with sessions.begin() as session:
        operation = delete_pool(session, PATH, "nodepool1")  # another System pool exists now
        assert operation is not None and operation.kind == "Delete"


def test_immutable_property_change_is_refused(sessions: sessionmaker[Session]) -> None:
    create_cluster(sessions, vm_size="Standard_D8s_v3")
    with sessions.begin() as session:
        assert get_pool(session, PATH, "nodepool1").os_disk_type == "Ephemeral"  # 200 GiB cache holds 128 GiB
        finish_operation(session, get_operation(session, SUB, only_operation_id(session)), "Succeeded")
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_pool(session, PATH, PoolSpec(name="nodepool1", vm_size="Standard_D4s_v3", os_type="Windows"))
    assert [(d.code, d.target) for d in raised.value.details] == [
        ("InvalidParameter", "name"),  # 9 characters: too long for a Windows pool
        ("InvalidOSSKU", "properties.osSKU"),
        ("EphemeralOSDiskSizeTooLarge", "properties.osDiskType"),  # D4s_v3 cannot hold the kept disk
        ("PropertyChangeNotAllowed", "properties.vmSize"),
        ("PropertyChangeNotAllowed", "properties.osType"),
    ]


def test_delete_pool_cancels_its_create(sessions: sessionmaker[Session]) -> None:
    create_cluster(sessions)
    with sessions.begin() as session:
        _pool, create, _ = put_pool(session, PATH, PoolSpec(name="userpool"))
        create_id = create.id
    with sessions.begin() as session:
        operation = delete_pool(session, PATH, "USERPOOL")
        assert operation is not None and operation.kind == "Delete"
        assert get_operation(session, SUB, create_id).status == "Canceled"
        assert delete_pool(session, PATH, "nosuchpool") is None
        finish_operation(session, operation, "Succeeded")
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        get_pool(session, PATH, "userpool")
    assert (raised.value.status, raised.value.code) == (404, "ResourceNotFound")


def test_delete_cluster_cancels_running_operations_and_finishes_by_reconciler(
    sessions: sessionmaker[Session],
) -> None:
    create_cluster(sessions)
    with sessions.begin() as session:
        operation = delete_cluster(session, PATH)
        assert operation is not None and operation.kind == "Delete"
        delete_id = operation.id
        assert get_cluster(session, PATH).provisioning_state == "Deleting"
    with sessions.begin() as session:
        again = delete_cluster(session, PATH)
        assert again is not None and again.id == delete_id  # idempotent while deleting
        with pytest.raises(ArmError) as raised:
            put_pool(session, PATH, PoolSpec(name="more"))
        assert (raised.value.status, raised.value.code) == (409, "OperationNotAllowed")
    with sessions.begin() as session:
        statuses = sorted(session.scalars(select(Operation.status)))
        assert statuses == ["Canceled", "InProgress"]
        finish_operation(session, get_operation(session, SUB, delete_id), "Succeeded")
    with sessions.begin() as session:
        assert find_cluster(session, PATH) is None
        assert delete_cluster(session, PATH) is None
        with pytest.raises(ArmError) as raised:
            get_operation(session, SUB, "nope")
        assert raised.value.status == 404


def test_invalid_paths_are_rejected() -> None:
    with pytest.raises(ArmError) as raised:
        ResourcePath("not-a-guid", "rg", "c")
    assert raised.value.code == "InvalidSubscriptionId"
    with pytest.raises(ArmError) as raised:
        ResourcePath(SUB, "rg.", "c")
    assert raised.value.code == "InvalidResourceGroup"
    with pytest.raises(ArmError) as raised:
        ResourcePath(SUB, "rg", "-bad")
    assert raised.value.code == "InvalidResourceName"


def finish_all(sessions: sessionmaker[Session]) -> None:
    """Finish every InProgress operation as the reconciler would (no VMs here)."""
    with sessions.begin() as session:
        for operation in session.scalars(select(Operation).where(Operation.status == "InProgress")):
            finish_operation(session, operation, "Succeeded")


def test_scaling_past_the_node_quota_counts_surge_nodes_and_shrinking_stays_allowed(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TL_QUOTA_NODES", "6")
    create_cluster(sessions, count=2)
    with sessions.begin() as session:
        put_pool(session, PATH, PoolSpec(name="userpool", count=2, max_surge="2"))  # 2 + 2 surge nodes
    finish_all(sessions)
    with pytest.raises(ArmError) as raised, sessions.begin() as session:
        put_pool(session, PATH, PoolSpec(name="userpool", count=3))  # 3 + 2 surge: 7 nodes
    assert (raised.value.status, raised.value.code) == (409, "QuotaExceeded")
    assert "Nodes quota" in raised.value.message
    assert "Current Limit: 6, Current Usage: 6, Additional Required: 1" in raised.value.message
    with sessions() as session:  # the refused request left nothing behind
        assert get_pool(session, PATH, "userpool").count == 2
        assert session.scalar(select(Operation).where(Operation.status == "InProgress")) is None
    with pytest.raises(ArmError) as raised, sessions.begin() as session:  # the same through the cluster
        put_cluster(
            session, PATH, ClusterSpec(location="eastus", agent_pools=[PoolSpec(name="nodepool1", count=3)])
        )
    assert raised.value.code == "QuotaExceeded" and "Additional Required: 1" in raised.value.message
    monkeypatch.setenv("TL_QUOTA_NODES", "4")  # lowered below the usage: scaling down is still allowed
    with sessions.begin() as session:
        put_pool(session, PATH, PoolSpec(name="userpool", count=1))
    with sessions() as session:
        assert get_pool(session, PATH, "userpool").count == 1


def test_cluster_quota_counts_clusters_being_deleted_until_they_are_gone(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TL_QUOTA_CLUSTERS", "1")
    create_cluster(sessions, count=1)
    other = ResourcePath(SUB.upper(), "otherGroup", "second")  # the same subscription in another case
    spec = ClusterSpec(location="eastus", agent_pools=[PoolSpec(name="nodepool1", count=1)])
    with sessions.begin() as session:
        delete_cluster(session, PATH)
    with pytest.raises(ArmError) as raised, sessions.begin() as session:
        put_cluster(session, other, spec)
    assert raised.value.code == "QuotaExceeded" and "Clusters quota" in raised.value.message
    assert "Current Limit: 1, Current Usage: 1, Additional Required: 1" in raised.value.message
    finish_all(sessions)
    with sessions.begin() as session:
        _cluster, _operation, created = put_cluster(session, other, spec)
        assert created


def test_concurrent_creates_cannot_pass_the_quota_together(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creates of one subscription racing in several threads (as in several API workers) are counted one
    after another: exactly the quota's worth succeed."""
    monkeypatch.setenv("TL_QUOTA_CLUSTERS", "3")
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def create(index: int) -> None:
        path = ResourcePath(SUB, f"group{index}", "racer")
        spec = ClusterSpec(location="eastus", agent_pools=[PoolSpec(name="nodepool1", count=1)])
        start.wait()
        try:
            with sessions.begin() as session:
                put_cluster(session, path, spec)
            outcomes.append("created")
        except ArmError as error:
            outcomes.append(error.code)

    threads = [threading.Thread(target=create, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["QuotaExceeded"] * 5 + ["created"] * 3
    with sessions() as session:
        assert len(list_clusters(session, SUB)) == 3


def test_the_pool_limit_counts_a_pool_put_and_a_cluster_put_alike(sessions: sessionmaker[Session]) -> None:
    """maxAgentPools counts the pools a cluster has once the request is done: a pool being deleted is not
    counted by a pool PUT (a cluster PUT waits for that delete, as AKS refuses it meanwhile), and a cluster
    PUT counts its new pools beside the ones it keeps."""
    user = [PoolSpec(f"p{index}", count=0, mode="User") for index in range(1, MAX_AGENT_POOLS)]
    with sessions.begin() as session:
        _, create, _ = put_cluster(session, PATH, ClusterSpec("eastus", agent_pools=[PoolSpec("sys"), *user]))
        finish_operation(session, create, "Succeeded")
    with sessions.begin() as session:
        deleting = delete_pool(session, PATH, "p1")  # 100 pools, one of them Deleting
        assert deleting is not None
        deleting_id = deleting.id
    with sessions.begin() as session:
        _, adding, _ = put_pool(session, PATH, PoolSpec("extra", count=0, mode="User"))  # 100 once p1 is gone
        adding_id = adding.id
    too_many = "The managed cluster would have 101 agent pools; at most 100 are allowed (maxAgentPools)."
    cluster_put = ClusterSpec("eastus", agent_pools=[PoolSpec("onetoomany", count=0, mode="User")])
    with sessions.begin() as session, pytest.raises(ArmError) as refused:
        put_pool(session, PATH, PoolSpec("onetoomany", count=0, mode="User"))
    assert [(v.code, v.message) for v in refused.value.details or [refused.value]] == [
        ("InvalidParameter", too_many)
    ]
    with sessions.begin() as session, pytest.raises(ArmError) as busy:
        put_cluster(session, PATH, cluster_put)
    assert (
        busy.value.code == "OperationNotAllowed" and "'p1' has an operation in progress" in busy.value.message
    )
    with sessions.begin() as session:
        for operation_id in (deleting_id, adding_id):
            finish_operation(session, session.get(Operation, operation_id), "Succeeded")
    with sessions.begin() as session, pytest.raises(ArmError) as refused:
        put_cluster(session, PATH, cluster_put)
    assert [(v.code, v.message) for v in refused.value.details or [refused.value]] == [
        ("InvalidParameter", too_many)
    ]
