"""Node image versions built from Debian's signed packages: the installed boot chain makes this release's
image (IMAGE_RELEASE); another signed kernel, shim or GRUB that Debian serves makes another version, built
without installing anything on the host (control.boot_packages), stored with its per-build record
(`ImageBuild`) and with its attestation policies predicted from its image before any node boots it.

Versions are ordered by their packages: the kernel's version, then shim's, then GRUB's, as dpkg orders
them (then, for the same packages, by name), so the latest is the one built from the newest packages. A new
version's name (<YYYYMM>.<DD>.<patch>, as AKS) follows that order: the day Debian built the newest package
of its boot chain, moved later when a version of older packages has a later name; the patch number tells
apart the versions of one day. Stored versions keep their names."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from debian.debian_support import Version
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.policy import Policy
from trustedlaunch.control import boot_packages
from trustedlaunch.control.boot_packages import BootLoaders, BootPackageError
from trustedlaunch.control.image_policies import record_image_policy
from trustedlaunch.control.node_images import (
    IMAGE_RELEASE,
    BootChain,
    build_release_image,
    image_release,
    installed_boot_chain,
    linux_image_version,
)
from trustedlaunch.eventlog.predict import PredictionError
from trustedlaunch.node import image as node_image
from trustedlaunch.node.debian import debian_release, package_version
from trustedlaunch.node.qemu import FIRMWARE
from trustedlaunch.store.models import NodeImage

RELEASE = re.compile(r"^(\d{6})\.(\d{2})\.(\d{1,3})$")  # AKS's <YYYYMM>.<DD>.<patch>
MAX_PATCH = 999
MAX_RECORD_CHARS = 4096


@dataclass(frozen=True)
class ImageBuild:
    """What a node image version is built from: its release (<YYYYMM>.<DD>.<patch>), its boot chain's Debian
    packages (kernel package, version and release; shim-signed and grub-efi-amd64-signed versions), the
    Kubernetes release and the container runtime of its root filesystem."""

    release: str
    kernel_package: str
    kernel_version: str
    kernel_release: str
    shim_version: str
    grub_version: str
    kubernetes: str
    node_runtime: str

    def version(self, *, trusted_launch: bool = True, debian: str | None = None) -> str:
        """Its nodeImageVersion (trusted launch capable or not) on Debian `debian` (by default the host's)."""
        debian = debian_release() if debian is None else debian
        return linux_image_version(trusted_launch=trusted_launch, debian=debian, release=self.release)

    def packages(self) -> tuple[Version, Version, Version]:
        """Its kernel, shim and GRUB package versions in dpkg's order: what orders versions."""
        return (
            package_version(self.kernel_version),
            package_version(self.shim_version),
            package_version(self.grub_version),
        )

    def order(self) -> tuple[tuple[Version, Version, Version], tuple[int, int, int]]:
        """Its place among versions (newest last): its packages, then (the same packages) its name."""
        return self.packages(), release_key(self.release)

    def same_build(self, other: ImageBuild) -> bool:
        """Whether `other` is built from the same packages and releases (whatever its release name)."""
        return {**asdict(self), "release": ""} == {**asdict(other), "release": ""}

    def to_json(self) -> str:
        """The stored record (camelCase JSON)."""
        fields = asdict(self)
        return json.dumps({_camel(name): value for name, value in fields.items()}, sort_keys=True)

    @classmethod
    def from_json(cls, document: str) -> ImageBuild:
        """A stored record; BootPackageError when it is not one (too long, fields missing or not strings)."""
        try:
            if len(document) > MAX_RECORD_CHARS:
                raise ValueError(f"more than {MAX_RECORD_CHARS} characters")
            record = json.loads(document)
            values = {name: record[_camel(name)] for name in cls.__dataclass_fields__}
            if not all(isinstance(value, str) and len(value) <= 200 for value in values.values()):
                raise ValueError("fields must be strings of at most 200 characters")
            if not RELEASE.fullmatch(values["release"]):
                raise ValueError(f"release {values['release'][:20]!r} is not <YYYYMM>.<DD>.<patch>")
            return cls(**values)
        except (ValueError, KeyError, TypeError) as error:
            raise BootPackageError(f"node image build record: {error}") from error


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def release_key(release: str) -> tuple[int, int, int]:
    """A release's sort key (newest last); (0, 0, 0) for a name that is not <YYYYMM>.<DD>.<patch>."""
    match = RELEASE.fullmatch(release)
    return (int(match[1]), int(match[2]), int(match[3])) if match else (0, 0, 0)


def boot_chain_date(chain: BootChain) -> date:
    """The day Debian built the newest package of `chain` (its files carry the package's build time)."""
    files = (chain.kernel.vmlinuz, chain.loaders.shim, chain.loaders.grub)
    return max(datetime.fromtimestamp(path.stat().st_mtime, UTC).date() for path in files)


def boot_chain(
    kernel_package: str | None = None,
    kernel_version: str | None = None,
    *,
    grub_version: str | None = None,
    shim_version: str | None = None,
    cache: Path | None = None,
) -> BootChain:
    """The boot chain of the kernel package `kernel_package` at `kernel_version` and of those GRUB and shim
    versions: the installed package where it is installed at that version (or none is named), else fetched
    from Debian into `cache`. Raises BootPackageError naming a package that cannot be had."""
    installed = installed_boot_chain()
    kernel = installed.kernel
    if kernel_package is not None or kernel_version is not None:
        if kernel_package is None or kernel_version is None:
            raise BootPackageError("a kernel package is named by its package name and its version together")
        if (kernel_package, kernel_version) != (kernel.package, kernel.version):
            kernel = boot_packages.fetched_kernel(kernel_package, kernel_version, cache)
    loaders = installed.loaders
    grub, grub_at = loaders.grub, loaders.grub_version
    if grub_version is not None and grub_version != grub_at:
        grub, grub_at = boot_packages.fetched_grub(grub_version, cache)
    shim, shim_at = loaders.shim, loaders.shim_version
    if shim_version is not None and shim_version != shim_at:
        shim, shim_at = boot_packages.fetched_shim(shim_version, cache)
    return BootChain(kernel, BootLoaders(shim, shim_at, grub, grub_at))


def stored_builds(session: Session, *, trusted_launch_capable: bool | None = None) -> dict[str, ImageBuild]:
    """nodeImageVersion -> its build record, for every stored Linux version that has one (only the trusted
    launch capable names, or only the others, when `trusted_launch_capable` says so)."""
    query = select(NodeImage.version, NodeImage.build_record).where(NodeImage.build_record.is_not(None))
    if trusted_launch_capable is not None:
        query = query.where(NodeImage.trusted_launch_capable.is_(trusted_launch_capable))
    rows = session.execute(query).all()
    return {version: ImageBuild.from_json(record) for version, record in rows if record is not None}


def _build_record(chain: BootChain, release: str) -> ImageBuild:
    recorded = image_release(boot_chain=chain)
    return ImageBuild(
        release=release,
        kernel_package=chain.kernel.package,
        kernel_version=chain.kernel.version,
        kernel_release=chain.kernel.release,
        shim_version=chain.loaders.shim_version,
        grub_version=chain.loaders.grub_version,
        kubernetes=recorded["kubernetes"],
        node_runtime=recorded["nodeRuntime"],
    )


def release_build(session: Session) -> ImageBuild | None:
    """What IMAGE_RELEASE is built from, as recorded when the store first knew it (pin_release_build), or
    None (not recorded yet)."""
    row = session.get(NodeImage, linux_image_version(trusted_launch=True, debian=debian_release()))
    return None if row is None or row.build_record is None else ImageBuild.from_json(row.build_record)


def pin_release_build(session: Session) -> None:
    """Record what IMAGE_RELEASE is built from (the installed boot chain) the first time the store knows it,
    so that the name keeps naming those bytes: once apt upgrades the host's kernel, shim or GRUB, the
    installed chain makes a version of its own (plan_build) and nodes booted from IMAGE_RELEASE's build
    are reimaged from the same packages (version_boot_chain). Nothing is recorded on a host whose boot chain
    packages or kernel are not installed (no Debian image can be built there)."""
    if release_build(session) is not None:
        return
    try:
        chain = installed_boot_chain()
    except (BootPackageError, node_image.NodeImageError):
        return
    register_build(session, _build_record(chain, IMAGE_RELEASE))


def plan_build(session: Session, chain: BootChain) -> ImageBuild:
    """The build record of an image of `chain` with this release's Kubernetes and runtime, named: a stored
    version built from the same packages keeps its name; the installed chain's is IMAGE_RELEASE unless that
    name already names another build (pin_release_build: the host's chain after apt upgraded it); any other
    gets a name that sorts as its packages do (ordered_release_name). A name never names two builds."""
    unnamed = _build_record(chain, IMAGE_RELEASE)
    builds = list(stored_builds(session).values())
    same = next((build for build in builds if build.same_build(unnamed)), None)
    if same is not None:
        return replace(unnamed, release=same.release)
    installed = installed_boot_chain()
    if release_build(session) is None:
        if chain.record() == installed.record():
            return unnamed
        builds.append(_build_record(installed, IMAGE_RELEASE))  # named so once the store pins it
    return replace(unnamed, release=ordered_release_name(unnamed, boot_chain_date(chain), builds))


def ordered_release_name(build: ImageBuild, built_on: date, builds: list[ImageBuild]) -> str:
    """A free release name for `build` that sorts after every version of older (or the same) packages and
    before every version of newer ones: on the day `built_on` (Debian built its newest package), or on the
    day of the latest-named older version when that is later, or else on the nearest day that fits; the next
    patch number free that day. When no name fits (two versions named on one day with consecutive patch
    numbers), the first free one after the older: its packages still place it."""
    older = [release_key(b.release) for b in builds if b.packages() <= build.packages()]
    newer = [release_key(b.release) for b in builds if b.packages() > build.packages()]
    taken = {release_key(b.release) for b in builds} | {release_key(IMAGE_RELEASE)}
    floor = max(older, default=(0, 0, 0))
    ceiling = min(newer, default=(999999, 99, MAX_PATCH + 1))
    days = [max(built_on, _day(floor))]  # else the latest day before the newer versions, else the older's
    if newer:
        days += [_day(ceiling), max(_day(ceiling), date(1, 1, 2)) - timedelta(days=1)]
    days += [_day(floor)] if older else []
    names = [name for day in days if (name := _first_free(day, floor, taken)) is not None]
    chosen = next((name for name in names if name < ceiling), names[0])
    return f"{chosen[0]:06d}.{chosen[1]:02d}.{chosen[2]}"  # the patch without leading zeros, as AKS


def _day(release: tuple[int, int, int]) -> date:
    """The day a release key names; (0, 0, 0), as any key that names no day, gives the first day there is."""
    try:
        return date(release[0] // 100, release[0] % 100, release[1])
    except ValueError:
        return date(1, 1, 1)


def _first_free(
    day: date, floor: tuple[int, int, int], taken: set[tuple[int, int, int]]
) -> tuple[int, int, int] | None:
    """The first release name of `day` after `floor` that is not taken (None when none is left)."""
    prefix = (day.year * 100 + day.month, day.day)
    return next(
        (
            (*prefix, patch)
            for patch in range(MAX_PATCH + 1)
            if (*prefix, patch) > floor and (*prefix, patch) not in taken
        ),
        None,
    )


def register_build(session: Session, build: ImageBuild) -> tuple[str, str]:
    """Store the version of `build` under its trusted-launch-capable name and its other name (the same bytes,
    as the catalogue's installed image); returns (capable name, other name)."""
    names = (build.version(trusted_launch=True), build.version(trusted_launch=False))
    for name, capable in zip(names, (True, False), strict=True):
        row = session.get(NodeImage, name)
        if row is None:
            row = NodeImage(
                version=name,
                os_type="Linux",
                os_sku=f"Debian{debian_release()}",
                hyper_v_generation="V2",
                architecture="x64",
                trusted_launch_capable=capable,
                fips=False,
            )
            session.add(row)
        row.build_record = build.to_json()
    return names


def predict_policies(session: Session, build: ImageBuild, image: node_image.NodeImage) -> dict[bool, Policy]:
    """The policies of `image` (the build of `build`) booted with Secure Boot on and off, predicted without
    booting it and stored for both its names (the verifier API's `poolId`); Secure Boot on/off -> policy."""
    policies = {}
    for secure_boot in (True, False):
        for capable in (False, True):  # the capable name's last: it is the one returned
            name = build.version(trusted_launch=capable)
            policies[secure_boot] = policy_for_image(image.esp_dir, FIRMWARE[secure_boot][1], node_image=name)
            record_image_policy(session, name, secure_boot, policies[secure_boot])
    return policies


def build_image_version(
    session: Session, out_dir: Path, chain: BootChain, *, operator_images: Path | None = None
) -> tuple[ImageBuild, node_image.NodeImage]:
    """Build the node image of `chain` into `out_dir`, store its version (named by plan_build, with its build
    record) and its predicted policies; the session is flushed, the caller commits. Raises BootPackageError
    naming the boot chain's packages when the image would not boot under Secure Boot (e.g. a GRUB that the
    shim's SBAT level revokes): nothing is stored."""
    build = plan_build(session, chain)
    image = build_release_image(out_dir, operator_images=operator_images, boot_chain=chain)
    try:
        policy_for_image(image.esp_dir, FIRMWARE[True][1])
    except PredictionError as error:
        packages = ", ".join(f"{key} {value}" for key, value in chain.record().items())
        raise BootPackageError(
            f"the node image of {packages} cannot be a node image version: {error}"
        ) from error
    register_build(session, build)
    session.flush()
    predict_policies(session, build, image)
    return build, image


def image_versions(session: Session) -> list[tuple[str, ImageBuild]]:
    """The catalogue of Linux versions (trusted launch capable names) with their build records, newest
    first in the order of their packages (ImageBuild.order): the installed boot chain's and every version
    built and stored."""
    builds = stored_builds(session, trusted_launch_capable=True)
    installed = plan_build(session, installed_boot_chain())
    builds.setdefault(installed.version(), installed)
    return sorted(builds.items(), key=lambda item: item[1].order(), reverse=True)


def newest_build(session: Session) -> ImageBuild | None:
    """The build of the latest node image version: the one built from the newest packages (image_versions),
    whatever its name; None on a host without a Debian boot chain installed (no version is known there).
    Reads only (the host's boot chain by dpkg-query, the store): store_version stores it."""
    try:
        return image_versions(session)[0][1]
    except (BootPackageError, node_image.NodeImageError):
        return None


def latest_version(session: Session, *, trusted_launch_capable: bool) -> tuple[str, ImageBuild] | None:
    """The latest node image version of a flavour (its trusted launch capable name, or its other one) with
    its build (newest_build), or None: what a new pool gets and what a node image upgrade moves a pool to.
    Reads only: the store may not name it yet (the host's boot chain after apt upgraded it) until a write
    gives it to a pool (store_version)."""
    newest = newest_build(session)
    return None if newest is None else (newest.version(trusted_launch=trusted_launch_capable), newest)


def store_version(session: Session, build: ImageBuild) -> None:
    """Store the version of `build` (register_build) unless the store names it already with its build, as a
    write does before giving it to a pool. Two transactions storing it at once both succeed: the one that
    inserts second rolls its insert back (a savepoint) and keeps the rows the first committed."""
    names = (build.version(trusted_launch=True), build.version(trusted_launch=False))
    rows = [session.get(NodeImage, name) for name in names]
    if all(row is not None and row.build_record is not None for row in rows):
        return
    try:
        with session.begin_nested():
            register_build(session, build)
    except IntegrityError:
        pass  # stored by a concurrent transaction meanwhile: its rows stand


def chain_of_build(build: ImageBuild, cache: Path | None = None) -> BootChain:
    """The boot chain `build` was built from (fetched again where it is not the installed one), to build its
    image anew; BootPackageError naming a package Debian no longer serves."""
    return boot_chain(
        build.kernel_package,
        build.kernel_version,
        grub_version=build.grub_version,
        shim_version=build.shim_version,
        cache=cache,
    )


def version_build(session: Session, version: str) -> ImageBuild | None:
    """The build record of the stored version `version`, None for a version without one (IMAGE_RELEASE in
    a store from before pin_release_build: the installed chain). Reads the store only: nothing is fetched."""
    row = session.get(NodeImage, version)
    return None if row is None or row.build_record is None else ImageBuild.from_json(row.build_record)


def version_boot_chain(session: Session, version: str, cache: Path | None = None) -> BootChain | None:
    """The boot chain the stored version `version` is built from (the installed one where its packages are
    installed), None for a version without a build record (version_build)."""
    build = version_build(session, version)
    return None if build is None else chain_of_build(build, cache)
