"""ResourceId: ARM ids parsed, built and compared case-insensitively, in the stored and the request forms."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from trustedlaunch.control.resource_id import (
    AGENT_POOLS,
    CONTAINER_SERVICE,
    MANAGED_CLUSTERS,
    ResourceId,
    path_within,
)

SUB = "1111AAAA-0000-0000-0000-000000000001"
POOL_ID = (
    f"/subscriptions/{SUB}/resourceGroups/Team-A/providers/Microsoft.ContainerService"
    "/managedClusters/Prod/agentPools/nodepool1"
)


def test_a_pool_id_parses_to_its_names_and_back() -> None:
    parsed = ResourceId.parse(POOL_ID)
    assert parsed is not None
    assert parsed.names(CONTAINER_SERVICE, MANAGED_CLUSTERS, AGENT_POOLS) == ("Prod", "nodepool1")
    assert parsed.names(CONTAINER_SERVICE, MANAGED_CLUSTERS) is None
    assert parsed.path() == POOL_ID
    assert parsed.canonical == (
        "/subscriptions/1111aaaa-0000-0000-0000-000000000001/resourcegroups/team-a/providers/"
        "Microsoft.ContainerService/managedClusters/prod/agentPools/nodepool1"
    )


def test_ids_compare_ignoring_case_in_every_part() -> None:
    built = ResourceId.cluster(SUB.lower(), "team-a", "prod").child(AGENT_POOLS, "NODEPOOL1")
    assert ResourceId.parse(POOL_ID.upper()) == built
    assert hash(ResourceId.parse(POOL_ID.upper())) == hash(built)
    assert ResourceId.cluster(SUB, "team-a", "prod") != built
    assert ResourceId.cluster(SUB, "team_a", "prod") != ResourceId.cluster(SUB, "team-a", "prod")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "subscriptions/x",
        "/subscriptions",
        "/subscriptions/",
        "/subscriptions/x/resourceGroups",
        "/subscriptions/x/resourceGroups//providers/ns",
        "/subscriptions/x/things/y",
        "/subscriptions/x/providers",
        "/subscriptions/x/providers/ns/type",
        POOL_ID + "/",
        POOL_ID.replace("/managedClusters/", "//"),
    ],
)
def test_what_is_not_an_id_does_not_parse(text: str) -> None:
    assert ResourceId.parse(text) is None


def test_encloses_is_by_whole_segments_and_refuses_dot_segments() -> None:
    group = ResourceId(SUB, "team-a")
    assert group.encloses(POOL_ID)
    assert group.encloses(f"/SUBSCRIPTIONS/{SUB}/RESOURCEGROUPS/TEAM-A")
    assert not group.encloses(f"/subscriptions/{SUB}/resourceGroups/team-a2/providers/x")
    assert not group.encloses(f"/subscriptions/{SUB}/resourceGroups/team-a/../team-b")
    assert not path_within("/a/./b", "/a")


def test_the_request_form_quotes_every_name_and_namespace_as_one_segment() -> None:
    features = ResourceId(SUB).provider("Microsoft.Features").child("providers", "a/b?c")
    assert features.child("features", "x#%").path(lambda name: quote(name, safe="")) == (
        f"/subscriptions/{SUB}/providers/Microsoft.Features/providers/a%2Fb%3Fc/features/x%23%25"
    )
    assert ResourceId(SUB).provider("../x").path(lambda name: quote(name, safe="")) == (
        f"/subscriptions/{SUB}/providers/..%2Fx"
    )
