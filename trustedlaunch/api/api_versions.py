"""The api-versions this server answers, per resource provider namespace, and ARM's validation of the
`api-version` query parameter.

As ARM: a request without one is refused with 400 MissingApiVersionParameter; a value that is not an
api-version at all, or one that Microsoft.Resources / Microsoft.Features (served by ARM itself) do not have,
with 400 InvalidApiVersionParameter; a well-formed version a resource provider (Microsoft.ContainerService)
does not have with 400 NoRegisteredProviderFound. Each lists the supported versions.

Trusted launch on AKS went GA with 2024-07-01: requests with a GA api-version create Secure Boot / vTPM pools
without the TrustedLaunchPreview registration, requests with a `-preview` api-version (the aks-preview
extension's, which the preview documentation uses) need it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trustedlaunch.control.errors import bad_request

API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
PREVIEW_SUFFIX = "-preview"


@dataclass(frozen=True)
class ProviderVersions:
    """The api-versions of one namespace; `served_by_arm` for ARM's own namespaces (their unknown versions are
    InvalidApiVersionParameter, a resource provider's NoRegisteredProviderFound)."""

    namespace: str
    versions: tuple[str, ...]
    served_by_arm: bool = False

    def listed(self) -> str:
        """The versions newest first, as ARM lists them in its errors."""
        return ", ".join(sorted(self.versions, reverse=True))


CONTAINER_SERVICE = ProviderVersions(
    "Microsoft.ContainerService",
    (
        # preview api-versions (aks-preview): trusted launch needs TrustedLaunchPreview registered
        "2023-11-02-preview",
        "2024-09-02-preview",
        "2025-06-02-preview",
        # GA api-versions since trusted launch went GA
        "2024-07-01",
        "2024-08-01",
        "2024-09-01",
        "2024-10-01",
        "2025-01-01",
        "2025-02-01",
        "2025-03-01",
        "2025-04-01",
        "2025-05-01",
        "2025-07-01",
        "2025-08-01",
        "2026-08-01",  # azure-mgmt-containerservice 41.8's default
    ),
)
RESOURCES = ProviderVersions(
    "Microsoft.Resources",
    ("2021-04-01", "2022-09-01", "2023-07-01", "2024-03-01", "2024-07-01", "2024-11-01", "2025-04-01"),
    served_by_arm=True,
)
FEATURES = ProviderVersions("Microsoft.Features", ("2015-12-01", "2021-07-01"), served_by_arm=True)
NAMESPACES = (CONTAINER_SERVICE, RESOURCES, FEATURES)


def is_preview(version: str) -> bool:
    """Whether `version` is a preview api-version (`YYYY-MM-DD-preview`)."""
    return version.endswith(PREVIEW_SUFFIX)


def check_api_version(version: str | None, provider: ProviderVersions, resource_type: str) -> str:
    """`version` if `provider` serves it, else the 400 ArmError ARM answers (see the module docstring)."""
    if version is None or not version.strip():
        raise bad_request(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
            "api-version",
        )
    if version in provider.versions:
        return version
    if provider.served_by_arm or not API_VERSION.match(version):
        raise bad_request(
            "InvalidApiVersionParameter",
            f"The api-version '{version[:64]}' is invalid. The supported versions are '{provider.listed()}'.",
            "api-version",
        )
    raise bad_request(
        "NoRegisteredProviderFound",
        f"No registered resource provider found for API version '{version}' and type '{resource_type}'. "
        f"The supported api-versions are '{provider.listed()}'.",
        "api-version",
    )


def provider_of(path: str) -> tuple[ProviderVersions, str]:
    """The namespace whose api-versions a request `path` needs and its resource type: Microsoft.Resources
    for resource groups and provider registration, Microsoft.Features for features, else
    Microsoft.ContainerService (whose versions this server's own extensions, Microsoft.Security alerts and
    Microsoft.TrustedLaunch tokens, take too). The namespace is read where ARM puts it (the segment after the
    `providers` that follows the subscription and resource group), so no resource name can pose as one."""
    segments = [segment for segment in path.split("/") if segment]
    lowered = [segment.lower() for segment in segments]
    start = 2 if lowered[:1] == ["subscriptions"] else 0
    if lowered[start : start + 1] == ["resourcegroups"]:
        start += 2
    if lowered[start : start + 1] != ["providers"]:
        return RESOURCES, "resourceGroups"
    namespace, rest = lowered[start + 1 : start + 2], segments[start + 2 :]
    if namespace == ["microsoft.features"]:
        return FEATURES, "features"
    if rest in ([], ["register"]) or namespace == ["microsoft.resources"]:
        return RESOURCES, "providers"
    return CONTAINER_SERVICE, "/".join(rest[0::2])


def default_version(path: str) -> str:
    """The api-version a client of this server sends for `path`: the newest GA one of its namespace."""
    provider, _type = provider_of(path)
    return max(version for version in provider.versions if not is_preview(version))
