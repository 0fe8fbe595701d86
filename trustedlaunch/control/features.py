"""Preview features and resource providers: `feature register` goes Registering -> Registered after a delay
(as with `az feature register`; `provider register` then propagates it, and does not hurry it)."""

from __future__ import annotations

import os
import re
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from trustedlaunch.control.errors import bad_request, not_found
from trustedlaunch.control.limits import FEATURE_NAME, FEATURE_NAMESPACE, canonical_subscription_id
from trustedlaunch.store.models import FeatureRegistration, ProviderRegistration, utc_now

DELAY_ENV = "TL_FEATURE_REGISTRATION_DELAY_SECONDS"
DEFAULT_DELAY_SECONDS = 60.0
KNOWN_FEATURES = {(FEATURE_NAMESPACE.lower(), FEATURE_NAME.lower()): (FEATURE_NAMESPACE, FEATURE_NAME)}
PROVIDER_NAMESPACE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)+$")


def registration_delay() -> timedelta:
    """How long a feature stays Registering (`TL_FEATURE_REGISTRATION_DELAY_SECONDS`, default 60)."""
    raw = os.environ.get(DELAY_ENV)
    try:
        seconds = float(raw) if raw else DEFAULT_DELAY_SECONDS
    except ValueError:
        seconds = DEFAULT_DELAY_SECONDS
    return timedelta(seconds=max(seconds, 0.0))


def _known_feature(namespace: str, name: str) -> tuple[str, str]:
    key = (namespace.lower(), name.lower())
    if key not in KNOWN_FEATURES:
        known = ", ".join(f"{ns}/{n}" for ns, n in KNOWN_FEATURES.values())
        raise not_found(
            "FeatureNotFound",
            f"Feature '{namespace}/{name}' does not exist; known features: {known}.",
            "name",
        )
    return KNOWN_FEATURES[key]


def _refresh(record: FeatureRegistration) -> None:
    if (
        record.state == "Registering"
        and record.requested_at is not None
        and utc_now() - record.requested_at >= registration_delay()
    ):
        record.state = "Registered"
        record.registered_at = utc_now()


def get_feature(session: Session, subscription_id: str, namespace: str, name: str) -> FeatureRegistration:
    """The feature's registration (state NotRegistered if never registered), advanced if its delay passed."""
    subscription_id = canonical_subscription_id(subscription_id)
    namespace, name = _known_feature(namespace, name)
    record = session.get(FeatureRegistration, (subscription_id, namespace, name))
    if record is None:
        return FeatureRegistration(
            subscription_id=subscription_id, namespace=namespace, name=name, state="NotRegistered"
        )
    _refresh(record)
    return record


def register_feature(
    session: Session, subscription_id: str, namespace: str, name: str
) -> FeatureRegistration:
    """Request registration: NotRegistered -> Registering (Registered stays Registered)."""
    subscription_id = canonical_subscription_id(subscription_id)
    namespace, name = _known_feature(namespace, name)
    record = session.get(FeatureRegistration, (subscription_id, namespace, name))
    if record is None:
        record = FeatureRegistration(
            subscription_id=subscription_id, namespace=namespace, name=name, state=""
        )
        session.add(record)
    if record.state != "Registered":
        record.state = "Registering"
        record.requested_at = utc_now()
        _refresh(record)
    return record


def list_features(
    session: Session, subscription_id: str, namespace: str | None = None
) -> list[FeatureRegistration]:
    """Every known feature of the subscription (optionally of one namespace) with its current state."""
    return [
        get_feature(session, subscription_id, ns, name)
        for ns, name in KNOWN_FEATURES.values()
        if namespace is None or ns.lower() == namespace.lower()
    ]


def _check_namespace(namespace: str) -> None:
    if not PROVIDER_NAMESPACE.match(namespace):
        raise bad_request(
            "InvalidResourceNamespace",
            f"'{namespace}' is not a resource provider namespace (expected e.g. Microsoft.ContainerService).",
            "namespace",
        )


def get_provider(session: Session, subscription_id: str, namespace: str) -> ProviderRegistration:
    """The provider's registration (state NotRegistered if never registered)."""
    subscription_id = canonical_subscription_id(subscription_id)
    _check_namespace(namespace)
    for record in session.scalars(
        select(ProviderRegistration).where(ProviderRegistration.subscription_id == subscription_id)
    ):
        if record.namespace.lower() == namespace.lower():
            return record
    return ProviderRegistration(subscription_id=subscription_id, namespace=namespace, state="NotRegistered")


def register_provider(session: Session, subscription_id: str, namespace: str) -> ProviderRegistration:
    """Register the provider; its Registering features stay Registering until their delay has passed, as on
    Azure."""
    subscription_id = canonical_subscription_id(subscription_id)
    record = get_provider(session, subscription_id, namespace)
    if record.state != "Registered":
        record.state = "Registered"
        record.registered_at = utc_now()
        session.add(record)
    return record


def trusted_launch_registered(session: Session, subscription_id: str) -> bool:
    """Whether TrustedLaunchPreview is Registered in the subscription."""
    return get_feature(session, subscription_id, FEATURE_NAMESPACE, FEATURE_NAME).state == "Registered"
