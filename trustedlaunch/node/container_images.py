"""The container images a node pre-loads: no registry is reachable, so what pods need comes with the image.

Both images are built here from Debian's busybox-static as OCI image layout archives (the tar `ctr images
import` reads): `oci-layout`, `index.json` and `blobs/sha256/` holding gzip'd tar layers, a config and a
manifest. Times, owners and entry order are fixed, so the same busybox gives the same digests.

- The sandbox ("pause") image, named as containerd 2.3's CRI plugin names its default pinned sandbox image
  (`[plugins.'io.containerd.cri.v1.images'.pinned_images] sandbox`), so no containerd setting is needed:
  busybox sh as PID 1 sleeps, reaps whatever exits in the pod, and exits at once on SIGTERM or SIGINT.
- A test image `trustedlaunch.internal/busybox:<busybox version>`: busybox and its applet links, cmd `sh`.

An operator adds an image of their own with `add_image_archive`, which checks the archive (bounded: every
byte of it is hostile) before it goes into a node image's directory of pre-loaded archives.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from trustedlaunch.errors import TrustedLaunchError

PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"  # containerd v2.3's default `pinned_images.sandbox`
BUSYBOX_REPOSITORY = "trustedlaunch.internal/busybox"
# Labels `ctr images import --label` gives pre-loaded images: kubelet's image garbage collection never
# removes a pinned image, and nothing could pull it back.
PRELOADED_IMAGE_LABELS = {"io.cri-containerd.pinned": "pinned"}

OCI_LAYOUT = "oci-layout"
OCI_INDEX = "index.json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST_LIST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
PLATFORM = {"architecture": "amd64", "os": "linux"}
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOBODY = 65534
# The upstream pause image's user: the sandbox's PID 1 needs no privilege.
PAUSE_USER = "65535:65535"
# PID 1 of a PID namespace gets only the signals it has a handler for: the trap installs them. `wait` returns
# when a trapped signal arrives, and each wait reaps every exited child (orphans of the pod included).
PAUSE_SCRIPT = b"""#!/bin/sh
# The pod sandbox's PID 1: sleep, reap children, exit at once on SIGTERM or SIGINT.
trap 'exit 0' TERM INT
while :; do
  sleep 86400 &
  wait $!
done
"""

MAX_ARCHIVE_BYTES = 4 << 30
MAX_ARCHIVE_MEMBERS = 10_000
MAX_JSON_BYTES = 4 << 20  # a layout file, index, manifest or config
MAX_INDEX_DEPTH = 4  # index -> (nested index ->) manifest -> config and layers
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_VERSION = re.compile(rb"BusyBox v(\d+\.\d+\.\d+)")
_CHUNK = 1 << 20


class ContainerImageError(TrustedLaunchError):
    """A container image cannot be built, or an OCI image archive is malformed or not importable."""


@dataclass(frozen=True)
class ImageArchive:
    """An OCI image layout archive of one image: its name, its manifest's digest and the tar's bytes."""

    reference: str
    manifest_digest: str
    data: bytes

    @property
    def file_name(self) -> str:
        """The archive's file name in a directory of pre-loaded images, made from the image's name."""
        return archive_file_name(self.reference)


def archive_file_name(reference: str) -> str:
    """A file name for an archive holding `reference` (characters outside [A-Za-z0-9._-] become `_`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", reference) + ".tar"


class _TarTree:
    """The entries of one tar (a layer, or the archive), written sorted with zero times and root ownership."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[tarfile.TarInfo, bytes]] = {}

    def _add(self, path: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
        name = PurePosixPath(path.strip("/"))
        for parent in reversed(name.parents[:-1]):
            if str(parent) not in self.entries:
                self._add(str(parent), tarfile.DIRTYPE, 0o755)
        info = tarfile.TarInfo(str(name))
        info.type, info.mode, info.size, info.linkname = kind, mode, len(data), link
        info.mtime = info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.entries[str(name)] = (info, data)

    def directory(self, path: str, mode: int = 0o755) -> None:
        self._add(path, tarfile.DIRTYPE, mode)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(path, tarfile.REGTYPE, mode, data)

    def symlink(self, path: str, target: str) -> None:
        self._add(path, tarfile.SYMTYPE, 0o777, link=target)

    def tar(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as layer:
            for name in sorted(self.entries):
                info, data = self.entries[name]
                layer.addfile(info, io.BytesIO(data))
        return out.getvalue()


def _gzip(data: bytes) -> bytes:
    """gzip with no file name and a zero mtime: byte-for-byte reproducible."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as compressed:
        compressed.write(data)
    return out.getvalue()


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def busybox_version(busybox: Path) -> str:
    """The upstream version busybox prints on its first line (e.g. 1.35.0)."""
    try:
        banner = subprocess.run([busybox], capture_output=True, timeout=30, check=False).stdout[:200]
    except OSError as error:
        raise ContainerImageError(
            f"cannot run busybox {busybox} (install busybox-static): {error}"
        ) from error
    match = _VERSION.match(banner)
    if match is None:
        raise ContainerImageError(f"{busybox} does not print a BusyBox version: {banner[:80]!r}")
    return match.group(1).decode()


def _busybox_tree(busybox: Path) -> _TarTree:
    """busybox with a link for each applet, /etc/passwd and /etc/group (root, nobody) and a /tmp."""
    tree = _TarTree()
    try:
        tree.file("bin/busybox", busybox.read_bytes(), 0o755)
        applets = subprocess.run(
            [busybox, "--list-full"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as error:
        raise ContainerImageError(
            f"cannot read busybox {busybox} (install busybox-static): {error}"
        ) from error
    for applet in applets:
        if applet != "bin/busybox":
            tree.symlink(applet, "/bin/busybox")
    tree.file(
        "etc/passwd",
        f"root:x:0:0:root:/root:/bin/sh\nnobody:x:{NOBODY}:{NOBODY}:nobody:/:/bin/false\n".encode(),
    )
    tree.file("etc/group", f"root:x:0:\nnogroup:x:{NOBODY}:\n".encode())
    tree.directory("root", 0o700)
    tree.directory("tmp", 0o1777)
    return tree


def oci_image_archive(reference: str, layers: list[bytes], image_config: dict[str, Any]) -> ImageArchive:
    """An OCI image layout archive of one linux/amd64 image made of `layers` (uncompressed tars, lowest
    first) and `image_config` (the config's `config` member: Cmd, Entrypoint, Env, User...)."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = _digest(data)
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    config = {
        **PLATFORM,
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer) for layer in layers]},
        "history": [{"created_by": "trustedlaunch.node.container_images"} for _ in layers],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": blob(_json(config), CONFIG_MEDIA_TYPE),
        "layers": [blob(_gzip(layer), LAYER_MEDIA_TYPE) for layer in layers],
    }
    entry = blob(_json(manifest), MANIFEST_MEDIA_TYPE)
    tag = reference.rpartition(":")[2]
    entry |= {
        "platform": PLATFORM,
        "annotations": {CONTAINERD_NAME_ANNOTATION: reference, REF_NAME_ANNOTATION: tag},
    }
    files = {
        OCI_LAYOUT: _json({"imageLayoutVersion": "1.0.0"}),
        OCI_INDEX: _json({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [entry]}),
        **{f"blobs/sha256/{digest.removeprefix('sha256:')}": data for digest, data in sorted(blobs.items())},
    }
    archive = _TarTree()
    for name, data in files.items():
        archive.file(name, data)
    return ImageArchive(reference, entry["digest"], archive.tar())


def pause_image(busybox: Path) -> ImageArchive:
    """The sandbox image (PAUSE_IMAGE): busybox's layer and a layer holding /pause, its entrypoint."""
    pause = _TarTree()
    pause.file("pause", PAUSE_SCRIPT, 0o755)
    return oci_image_archive(
        PAUSE_IMAGE,
        [_busybox_tree(busybox).tar(), pause.tar()],
        {"Entrypoint": ["/pause"], "Env": [PATH_ENV], "User": PAUSE_USER, "WorkingDir": "/"},
    )


def busybox_image(busybox: Path) -> ImageArchive:
    """The test image `trustedlaunch.internal/busybox:<version>`: busybox's layer, default command `sh`."""
    return oci_image_archive(
        f"{BUSYBOX_REPOSITORY}:{busybox_version(busybox)}",
        [_busybox_tree(busybox).tar()],
        {"Cmd": ["sh"], "Env": [PATH_ENV], "WorkingDir": "/"},
    )


def write_node_images(directory: Path, busybox: Path) -> list[Path]:
    """Write the pause and the test image's archives into a node image's directory of pre-loaded images."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in (pause_image(busybox), busybox_image(busybox)):
        path = directory / image.file_name
        path.write_bytes(image.data)
        paths.append(path)
    return paths


def add_image_archive(directory: Path, archive: Path) -> Path:
    """Copy an operator's OCI image layout archive into a node image's directory of pre-loaded images,
    after checking that `ctr images import` can import it under its names; the copy's path."""
    references = image_archive_references(archive)
    directory.mkdir(parents=True, exist_ok=True)
    destination = directory / archive_file_name(references[0])
    shutil.copyfile(archive, destination)
    return destination


def image_archive_references(archive: Path) -> list[str]:
    """The image names an OCI image layout archive gives its images, after checking the archive: its layout
    file and index, each image's name, and every blob the index reaches (present, of its size and digest)."""
    size = _archive_size(archive)
    if size > MAX_ARCHIVE_BYTES:
        raise ContainerImageError(
            f"{archive}: {size} bytes, more than {MAX_ARCHIVE_BYTES} for an image archive"
        )
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = _regular_members(archive, tar)
            return _OciLayout(archive, tar, members).references()
    except (tarfile.TarError, EOFError) as error:
        raise ContainerImageError(f"{archive} is not a tar archive: {error}") from error


def _archive_size(archive: Path) -> int:
    try:
        return archive.stat().st_size
    except OSError as error:
        raise ContainerImageError(f"cannot read image archive {archive}: {error}") from error


def _regular_members(archive: Path, tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    for count, member in enumerate(_iterate(tar), start=1):
        if count > MAX_ARCHIVE_MEMBERS:
            raise ContainerImageError(f"{archive}: more than {MAX_ARCHIVE_MEMBERS} entries")
        if member.isfile():
            members[str(PurePosixPath(member.name.lstrip("/")))] = member
    return members


def _iterate(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    member = tar.next()
    while member is not None:
        yield member
        member = tar.next()


class _OciLayout:
    """The checks on one archive's OCI image layout."""

    def __init__(self, archive: Path, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> None:
        self.archive, self.tar, self.members = archive, tar, members
        self.verified: set[str] = set()  # blobs already hashed: many descriptors may name one blob

    def error(self, message: str) -> ContainerImageError:
        return ContainerImageError(f"image archive {self.archive}: {message}")

    def read(self, name: str, limit: int) -> bytes:
        member = self.members.get(name)
        if member is None:
            raise self.error(f"has no {name}")
        if member.size > limit:
            raise self.error(f"{name} is {member.size} bytes, more than {limit}")
        extracted = self.tar.extractfile(member)
        assert extracted is not None  # a regular file
        return extracted.read(limit)

    def document(self, name: str) -> dict[str, Any]:
        try:
            document = json.loads(self.read(name, MAX_JSON_BYTES))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise self.error(f"{name} is not JSON: {error}") from error
        if not isinstance(document, dict):
            raise self.error(f"{name} is not a JSON object")
        return document

    def blob(self, descriptor: object, where: str) -> str:
        """Check that the blob a descriptor names is in the archive with its size and digest; its name."""
        if not isinstance(descriptor, dict):
            raise self.error(f"a descriptor in {where} is not an object")
        digest, size = descriptor.get("digest"), descriptor.get("size")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise self.error(f"{where} names a blob by {str(digest)[:80]!r}, not a sha256 digest")
        name = f"blobs/sha256/{digest.removeprefix('sha256:')}"
        member = self.members.get(name)
        if member is None:
            raise self.error(f"{where} names blob {digest}, which the archive lacks")
        if type(size) is not int or member.size != size:
            raise self.error(f"blob {digest} is {member.size} bytes, {where} says {size!r}")
        if name in self.verified:
            return name
        hashed = hashlib.sha256()
        extracted = self.tar.extractfile(member)
        assert extracted is not None
        while chunk := extracted.read(_CHUNK):
            hashed.update(chunk)
        if f"sha256:{hashed.hexdigest()}" != digest:
            raise self.error(f"blob {digest} does not match its digest")
        self.verified.add(name)
        return name

    def check_image(self, descriptor: dict[str, Any], where: str, depth: int) -> None:
        """Check a manifest or (nested) index, the blobs it names, and recursively theirs."""
        if depth > MAX_INDEX_DEPTH:
            raise self.error(f"{where}: indexes nested more than {MAX_INDEX_DEPTH} deep")
        name = self.blob(descriptor, where)
        document = self.document(name)
        media_type = descriptor.get("mediaType")
        if media_type in (INDEX_MEDIA_TYPE, DOCKER_MANIFEST_LIST_MEDIA_TYPE):
            # a multi-platform archive may hold only some platforms' blobs: the node needs linux/amd64's
            entries = [entry for entry in self.descriptors(document, "manifests", name) if _for_node(entry)]
            if not entries:
                raise self.error(f"{name} lists no image for {PLATFORM['os']}/{PLATFORM['architecture']}")
            for entry in entries:
                self.check_image(entry, name, depth + 1)
        elif media_type in (MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE):
            config = self.document(self.blob(document.get("config"), name))
            platform = (config.get("os"), config.get("architecture"))
            if platform != (PLATFORM["os"], PLATFORM["architecture"]):
                platform_name = "/".join(map(str, platform))[:80]
                raise self.error(f"{name} is an image for {platform_name}, not linux/amd64")
            for layer in self.descriptors(document, "layers", name):
                self.blob(layer, name)
        else:
            raise self.error(
                f"{where} names a {str(media_type)[:80]!r}, neither an image manifest nor an index"
            )

    def descriptors(self, document: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
        entries = document.get(key)
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise self.error(f"{where} has no list of descriptors in {key!r}")
        return entries

    def references(self) -> list[str]:
        if OCI_LAYOUT not in self.members and "manifest.json" in self.members:
            raise self.error(
                "a Docker archive (manifest.json), not an OCI image layout: convert it, e.g. with "
                "`skopeo copy docker-archive:IN.tar oci-archive:OUT.tar:REGISTRY/REPOSITORY:TAG`"
            )
        if self.document(OCI_LAYOUT).get("imageLayoutVersion") != "1.0.0":
            raise self.error(f"{OCI_LAYOUT} does not say imageLayoutVersion 1.0.0")
        index = self.document(OCI_INDEX)
        references = []
        for entry in self.descriptors(index, "manifests", OCI_INDEX):
            self.check_image(entry, OCI_INDEX, 0)
            annotations = entry.get("annotations")
            names = annotations if isinstance(annotations, dict) else {}
            reference = names.get(CONTAINERD_NAME_ANNOTATION) or names.get(REF_NAME_ANNOTATION)
            if not isinstance(reference, str) or not _is_full_reference(reference):
                raise self.error(
                    f"image {str(entry.get('digest'))[:80]} has no full image name (registry/repository:tag) "
                    f"in its {CONTAINERD_NAME_ANNOTATION} or {REF_NAME_ANNOTATION} annotation: "
                    f"{str(reference)[:80]!r}"
                )
            references.append(reference)
        if not references:
            raise self.error(f"{OCI_INDEX} lists no image")
        return references


def _for_node(descriptor: dict[str, Any]) -> bool:
    """Whether an index entry is for the node's platform (an entry naming none may be)."""
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return True
    return all(platform.get(key) == value for key, value in PLATFORM.items())


def _is_full_reference(reference: str) -> bool:
    """A name with a domain, a repository and a tag or digest, as kubelet asks the runtime for it."""
    return (
        bool(
            re.fullmatch(
                r"(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+)(?::[0-9]+)?/[a-z0-9._/-]+"
                r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})",
                reference,
            )
        )
        and len(reference) <= 255
    )
