"""The images a node pre-loads (node/container_images.py): real OCI image layouts, reproducible, checked
when an operator adds one, and working with the cached runtime (as root): imported into the CRI's `k8s.io`
namespace under the names a pod spec uses, the test image runs, the pause image is the sandbox image the CRI
pins, reaps orphans and stops at once on SIGTERM or SIGINT, and a standalone kubelet runs a pod of them with
`imagePullPolicy: IfNotPresent` and no registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from private_containerd import ctr, needs_root, private_containerd, run

from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.node_runtime_release import NodeRuntime
from trustedlaunch.node import container_images
from trustedlaunch.node.container_images import (
    BUSYBOX_REPOSITORY,
    CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    PAUSE_IMAGE,
    PRELOADED_IMAGE_LABELS,
    ContainerImageError,
    ImageArchive,
    add_image_archive,
    busybox_image,
    busybox_version,
    image_archive_references,
    pause_image,
    write_node_images,
)
from trustedlaunch.node.image import BUSYBOX

SIGTERM_STOP_SECONDS = 2.0


@pytest.fixture(scope="module")
def images() -> dict[str, ImageArchive]:
    return {"pause": pause_image(BUSYBOX), "busybox": busybox_image(BUSYBOX)}


def archive_files(data: bytes) -> dict[str, bytes]:
    """The regular files of a tar archive, by name."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {
            member.name: tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in tar.getmembers()
            if member.isfile()
        }


def write_archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def blob(files: dict[str, bytes], descriptor: dict[str, Any]) -> bytes:
    """The blob a descriptor names, checked against the descriptor's digest and size."""
    data = files[f"blobs/sha256/{descriptor['digest'].removeprefix('sha256:')}"]
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == descriptor["digest"]
    assert len(data) == descriptor["size"]
    return data


def layout(image: ImageArchive) -> tuple[dict[str, Any], dict[str, Any], list[tarfile.TarFile]]:
    """The manifest, config and layer tars of an archive, every blob checked against its descriptor."""
    files = archive_files(image.data)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2
    [entry] = index["manifests"]
    assert entry["mediaType"] == MANIFEST_MEDIA_TYPE
    assert entry["digest"] == image.manifest_digest
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert entry["annotations"]["io.containerd.image.name"] == image.reference
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == image.reference.rpartition(":")[2]
    manifest = json.loads(blob(files, entry))
    assert (manifest["schemaVersion"], manifest["mediaType"]) == (2, MANIFEST_MEDIA_TYPE)
    assert manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    config = json.loads(blob(files, manifest["config"]))
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    layers = []
    for descriptor, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert descriptor["mediaType"] == LAYER_MEDIA_TYPE
        uncompressed = gzip.decompress(blob(files, descriptor))
        assert diff_id == f"sha256:{hashlib.sha256(uncompressed).hexdigest()}"  # diff_ids: uncompressed
        layers.append(tarfile.open(fileobj=io.BytesIO(uncompressed)))  # noqa: SIM115 (in memory)
    assert config["rootfs"]["type"] == "layers"
    return manifest, config, layers


def test_both_images_are_oci_layouts_whose_blobs_match_their_descriptors(
    images: dict[str, ImageArchive],
) -> None:
    _, config, [busybox_layer] = layout(images["busybox"])
    assert images["busybox"].reference == f"{BUSYBOX_REPOSITORY}:{busybox_version(BUSYBOX)}"
    assert config["config"]["Cmd"] == ["sh"]
    members = {member.name: member for member in busybox_layer.getmembers()}
    assert busybox_layer.extractfile(members["bin/busybox"]).read() == BUSYBOX.read_bytes()  # type: ignore[union-attr]
    assert members["bin/busybox"].mode == 0o755
    for applet in ("bin/sh", "bin/sleep", "sbin/init", "usr/bin/wget"):
        assert members[applet].issym() and members[applet].linkname == "/bin/busybox"
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    owners_and_times = {(member.mtime, member.uid, member.gid, member.uname) for member in members.values()}
    assert owners_and_times == {(0, 0, 0, "")}

    pause_manifest, pause_config, [_, pause_layer] = layout(images["pause"])
    assert images["pause"].reference == PAUSE_IMAGE
    assert pause_config["config"]["Entrypoint"] == ["/pause"]
    assert pause_config["config"]["User"] == "65535:65535"
    assert pause_layer.getnames() == ["pause"]
    assert pause_layer.getmember("pause").mode == 0o755
    assert b"trap 'exit 0' TERM INT" in pause_layer.extractfile("pause").read()  # type: ignore[union-attr]
    busybox_manifest, _, _ = layout(images["busybox"])
    assert pause_manifest["layers"][0] == busybox_manifest["layers"][0]  # one busybox blob for both


def test_the_same_busybox_gives_the_same_digests(images: dict[str, ImageArchive], tmp_path: Path) -> None:
    assert pause_image(BUSYBOX) == images["pause"]
    assert busybox_image(BUSYBOX) == images["busybox"]
    paths = write_node_images(tmp_path / "images", BUSYBOX)
    assert [path.name for path in paths] == [
        "registry.k8s.io_pause_3.10.2.tar",
        f"trustedlaunch.internal_busybox_{busybox_version(BUSYBOX)}.tar",
    ]
    assert [path.read_bytes() for path in paths] == [images["pause"].data, images["busybox"].data]
    references = [image_archive_references(path) for path in paths]
    assert references == [[PAUSE_IMAGE], [images["busybox"].reference]]


def test_the_pause_image_is_containerds_default_sandbox_image(node_runtime: NodeRuntime) -> None:
    """No containerd setting is needed: the CRI plugin's default pinned sandbox image is ours."""
    default = tomllib.loads(run(node_runtime.binary("containerd"), "config", "default"))
    images_plugin = default["plugins"]["io.containerd.cri.v1.images"]
    assert images_plugin["pinned_images"]["sandbox"] == PAUSE_IMAGE


def test_an_operators_archive_is_checked_and_added(images: dict[str, ImageArchive], tmp_path: Path) -> None:
    archive = tmp_path / "mine.tar"
    archive.write_bytes(images["busybox"].data)
    added = add_image_archive(tmp_path / "node-images", archive)
    assert added == tmp_path / "node-images" / images["busybox"].file_name
    assert added.read_bytes() == archive.read_bytes()


OPERATOR_IMAGE = "registry.example/ops/busybox:multi"


def operator_archive(image: ImageArchive) -> dict[str, bytes]:
    """An archive as multi-platform tools write them: `image` named only by the OCI annotation, and also
    OPERATOR_IMAGE through an image index nested in index.json, listing an arm64 manifest too, whose blobs
    the archive does not hold."""
    files = archive_files(image.data)
    index = json.loads(files["index.json"])
    [entry] = index["manifests"]
    entry["annotations"] = {"org.opencontainers.image.ref.name": image.reference}
    arm64 = {
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": f"sha256:{'0' * 64}",
        "size": 1000,
        "platform": {"architecture": "arm64", "os": "linux"},
    }
    platforms = [entry, arm64]
    nested = json.dumps({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": platforms}).encode()
    digest = hashlib.sha256(nested).hexdigest()
    files[f"blobs/sha256/{digest}"] = nested
    named = {"io.containerd.image.name": OPERATOR_IMAGE, "org.opencontainers.image.ref.name": "multi"}
    nested_entry = {"mediaType": INDEX_MEDIA_TYPE, "digest": f"sha256:{digest}", "size": len(nested)}
    index["manifests"].insert(0, nested_entry | {"annotations": named})
    files["index.json"] = json.dumps(index).encode()
    return files


def test_an_archive_of_several_images_and_nested_indexes_is_accepted(
    images: dict[str, ImageArchive], tmp_path: Path
) -> None:
    archive = write_archive(tmp_path / "tools.tar", operator_archive(images["busybox"]))
    assert image_archive_references(archive) == [OPERATOR_IMAGE, images["busybox"].reference]
    added = add_image_archive(tmp_path / "node-images", archive)
    assert added.name == "registry.example_ops_busybox_multi.tar"


def blob_name(descriptor: dict[str, Any]) -> str:
    return f"blobs/sha256/{descriptor['digest'].removeprefix('sha256:')}"


def store_blob(files: dict[str, bytes], descriptor: dict[str, Any], data: bytes) -> None:
    """Add `data` as a blob and point `descriptor` at it."""
    descriptor |= {"digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "size": len(data)}
    files[blob_name(descriptor)] = data


def altered(image: ImageArchive, change: str) -> dict[str, bytes]:
    """The files of `image`'s archive with one thing wrong, as `change` names it."""
    files = archive_files(image.data)
    index = json.loads(files["index.json"])
    entry = index["manifests"][0]
    manifest = json.loads(files[blob_name(entry)])
    layer_name = blob_name(manifest["layers"][0])
    if change == "arm64":
        config_descriptor = manifest["config"]
        config = json.loads(files.pop(blob_name(config_descriptor)))
        config["architecture"] = "arm64"
        store_blob(files, config_descriptor, json.dumps(config).encode())
        del files[blob_name(entry)]
        store_blob(files, entry, json.dumps(manifest).encode())
    elif change == "flipped layer byte":
        layer = bytearray(files[layer_name])
        layer[100] ^= 1
        files[layer_name] = bytes(layer)
    elif change == "missing layer":
        del files[layer_name]
    elif change == "wrong size":
        entry["size"] += 1
    elif change == "short name":
        entry["annotations"] = {"org.opencontainers.image.ref.name": "1.35.0"}
    elif change == "no layout":
        del files["oci-layout"]
    elif change == "docker archive":
        del files["oci-layout"]
        files["manifest.json"] = b"[]"
    elif change == "index not JSON":
        files["index.json"] = b"\xff{"
    elif change == "not a digest":
        entry["digest"] = "sha256:../../etc/passwd"
    elif change == "artifact":
        entry["mediaType"] = "application/vnd.example.thing"
    if change != "index not JSON":
        files["index.json"] = json.dumps(index).encode()
    return files


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("arm64", r"blobs/sha256/[0-9a-f]{64} is an image for linux/arm64, not linux/amd64"),
        ("flipped layer byte", r"blob sha256:[0-9a-f]{64} does not match its digest"),
        ("missing layer", r"names blob sha256:[0-9a-f]{64}, which the archive lacks"),
        ("wrong size", r"blob sha256:[0-9a-f]{64} is \d+ bytes, index.json says \d+"),
        ("short name", r"has no full image name \(registry/repository:tag\).*'1.35.0'"),
        ("no layout", r"has no oci-layout"),
        ("docker archive", r"a Docker archive \(manifest.json\), not an OCI image layout: convert it"),
        ("index not JSON", r"index.json is not JSON"),
        ("not a digest", r"index.json names a blob by 'sha256:../../etc/passwd', not a sha256 digest"),
        ("artifact", r"names a 'application/vnd.example.thing', neither an image manifest nor an index"),
    ],
)
def test_a_malformed_archive_is_refused_naming_it(
    images: dict[str, ImageArchive], tmp_path: Path, change: str, message: str
) -> None:
    archive = write_archive(tmp_path / "bad.tar", altered(images["busybox"], change))
    with pytest.raises(ContainerImageError, match=rf"^image archive {archive}: .*{message}"):
        add_image_archive(tmp_path / "node-images", archive)
    assert not (tmp_path / "node-images").exists()


def test_hostile_archives_are_bounded(
    images: dict[str, ImageArchive], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_tar = tmp_path / "not.tar"
    not_tar.write_bytes(b"\0not a tar" * 100)
    with pytest.raises(ContainerImageError, match=rf"^{not_tar} is not a tar archive"):
        image_archive_references(not_tar)
    archive = tmp_path / "image.tar"
    archive.write_bytes(images["busybox"].data)
    monkeypatch.setattr(container_images, "MAX_JSON_BYTES", 100)
    with pytest.raises(ContainerImageError, match=r"index.json is \d+ bytes, more than 100"):
        image_archive_references(archive)
    monkeypatch.setattr(container_images, "MAX_ARCHIVE_MEMBERS", 3)
    with pytest.raises(ContainerImageError, match=r"more than 3 entries"):
        image_archive_references(archive)
    monkeypatch.setattr(container_images, "MAX_ARCHIVE_BYTES", 1000)
    with pytest.raises(ContainerImageError, match=r"\d+ bytes, more than 1000 for an image archive"):
        image_archive_references(archive)


@pytest.fixture
def cri_containerd(node_runtime: NodeRuntime, tmp_path: Path) -> Iterator[Path]:
    """A private containerd with its CRI plugin loaded; its socket's path."""
    with private_containerd(node_runtime, tmp_path) as socket:
        plugins = run(*ctr(node_runtime, socket, "k8s.io"), "plugins", "list").splitlines()
        assert ["io.containerd.grpc.v1", "cri", "-", "ok"] in [line.split() for line in plugins]
        yield socket


@pytest.fixture
def k8s_ctr(node_runtime: NodeRuntime, cri_containerd: Path) -> list[str | Path]:
    """`ctr` in the CRI's namespace (k8s.io)."""
    return ctr(node_runtime, cri_containerd, "k8s.io")


def image_labels(k8s_ctr: list[str | Path]) -> dict[str, dict[str, str]]:
    """Each image of the namespace: its labels, by name."""
    listing: dict[str, dict[str, str]] = {}
    for line in run(*k8s_ctr, "images", "list").splitlines()[1:]:
        name, *_, labels = line.split()
        listing[name] = dict(label.split("=", 1) for label in labels.split(",") if "=" in label)
    return listing


@needs_root
def test_the_cri_sees_both_images_under_their_pod_spec_names_and_pins_the_sandbox_image(
    k8s_ctr: list[str | Path], tmp_path: Path, images: dict[str, ImageArchive]
) -> None:
    """Imported without labels, the CRI plugin still records both (as the image ids kubelet is given: the
    config digests) and pins the pause image on its own: the name is the one it uses for sandboxes."""
    for image in images.values():
        run(*k8s_ctr, "images", "import", write_archive_bytes(tmp_path / image.file_name, image.data))
    labels = image_labels(k8s_ctr)
    for name, image in images.items():
        assert labels[image.reference].get("io.cri-containerd.image") == "managed", name
        image_id = image_config_digest(image)  # what the CRI gives kubelet as the image's id
        assert labels[image_id].get("io.cri-containerd.image") == "managed", name
    assert labels[PAUSE_IMAGE].get("io.cri-containerd.pinned") == "pinned"
    assert "io.cri-containerd.pinned" not in labels[images["busybox"].reference]
    fifo_dir = tmp_path / "fifo"
    output = run(
        *k8s_ctr,
        "run",
        "--rm",
        "--fifo-dir",
        fifo_dir,
        images["busybox"].reference,
        "tl-busybox",
        "sh",
        "-c",
        "echo hello from $(busybox | head -n 1 | cut -d ' ' -f 1,2); id -un",
    )
    assert output == f"hello from BusyBox v{busybox_version(BUSYBOX)}\nroot\n"


def write_archive_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def image_config_digest(image: ImageArchive) -> str:
    manifest, _, _ = layout(image)
    return str(manifest["config"]["digest"])


@needs_root
def test_preloaded_images_are_pinned_by_their_import_labels(
    k8s_ctr: list[str | Path], tmp_path: Path, images: dict[str, ImageArchive]
) -> None:
    archive = write_archive_bytes(tmp_path / "busybox.tar", images["busybox"].data)
    label_options = [f"--label={key}={value}" for key, value in PRELOADED_IMAGE_LABELS.items()]
    run(*k8s_ctr, "images", "import", *label_options, archive)
    assert image_labels(k8s_ctr)[images["busybox"].reference].get("io.cri-containerd.pinned") == "pinned"


def children(pid: int) -> list[int]:
    """The host PIDs of a process's children, zombies (exited, not yet reaped) included."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def task_pid(k8s_ctr: list[str | Path], container: str) -> int | None:
    """The host PID of a container's first process, None while it has no task."""
    for line in run(*k8s_ctr, "task", "list").splitlines()[1:]:
        name, pid, _ = line.split()
        if name == container:
            return int(pid)
    return None


@needs_root
@pytest.mark.parametrize("signal", ["SIGTERM", "SIGINT"])
def test_the_pause_container_reaps_orphans_and_stops_at_once_on_a_signal(
    k8s_ctr: list[str | Path], tmp_path: Path, images: dict[str, ImageArchive], signal: str
) -> None:
    pause = images["pause"]
    run(*k8s_ctr, "images", "import", write_archive_bytes(tmp_path / pause.file_name, pause.data))
    fifo_dir = tmp_path / "fifo"
    run_options = ("--read-only", "--fifo-dir", fifo_dir)  # read-only, as the CRI runs a sandbox
    task = subprocess.Popen(
        [str(part) for part in [*k8s_ctr, "run", *run_options, PAUSE_IMAGE, "tl-pause"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        # started: its PID 1 runs and has forked its sleep
        while (pause_pid := task_pid(k8s_ctr, "tl-pause")) is None or not children(pause_pid):
            assert task.poll() is None, task.communicate()
            assert time.monotonic() < deadline, "the pause container did not start within 20 s"
            time.sleep(0.1)
        assert "\nUid:\t65535\t" in Path(f"/proc/{pause_pid}/status").read_text()  # PID 1 unprivileged
        # an exec'd shell leaves a child behind (its output elsewhere, so that `ctr task exec` returns at
        # once): orphaned, it becomes pause's child; when it exits, pause must reap it
        [sleeping] = children(pause_pid)
        orphan = "sleep 1 </dev/null >/dev/null 2>&1 & exit 0"
        exec_options = ("--fifo-dir", fifo_dir, "--exec-id", "orphan")
        run(*k8s_ctr, "task", "exec", *exec_options, "tl-pause", "sh", "-c", orphan)
        assert len(children(pause_pid)) == 2  # its own sleep and the orphan
        time.sleep(1.5)
        assert children(pause_pid) == [sleeping]  # the orphan exited and was reaped: no zombie
        started = time.monotonic()
        run(*k8s_ctr, "task", "kill", "--signal", signal, "tl-pause")
        task.wait(timeout=20)
        stopped_after = time.monotonic() - started
    finally:
        if task.poll() is None:
            run(*k8s_ctr, "task", "kill", "--signal", "SIGKILL", "tl-pause")
            task.wait(timeout=20)
    assert task.returncode == 0
    assert stopped_after < SIGTERM_STOP_SECONDS


def kubelet_configuration(directory: Path, socket: Path) -> dict[str, Any]:
    """A standalone kubelet (no apiserver, no server of its own) running the static pods of
    `directory`/manifests on the containerd at `socket`, all its files under `directory`, leaving the host's
    cgroups and pods alone (no QoS cgroups, no eviction or image garbage collection to speak of)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "enableServer": False,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "staticPodPath": str(directory / "manifests"),
        "fileCheckFrequency": "1s",
        "containerRuntimeEndpoint": f"unix://{socket}",
        "podLogsDir": str(directory / "pods"),
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failCgroupV1": False,  # the test machine's cgroups (the node's kernel uses cgroup v2)
        "failSwapOn": False,
        "resolvConf": "",
        "evictionHard": {"memory.available": "1Mi"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
    }


def wait_for(condition: Callable[[], bool], what: str, seconds: float) -> None:
    """Poll `condition` until it is true; fails the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.2)


@needs_root
@pytest.mark.slow
def test_a_kubelet_runs_a_pod_of_the_preloaded_images_without_pulling(
    kubernetes_release: KubernetesRelease,
    node_runtime: NodeRuntime,
    cri_containerd: Path,
    k8s_ctr: list[str | Path],
    tmp_path: Path,
    images: dict[str, ImageArchive],
) -> None:
    """What a node does: kubelet asks the CRI for the pod's image (`imagePullPolicy: IfNotPresent`) and the
    CRI starts the sandbox from its default pause image, both found pre-loaded, with no registry in reach."""
    for image in images.values():
        run(*k8s_ctr, "images", "import", write_archive_bytes(tmp_path / image.file_name, image.data))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {
            "hostNetwork": True,  # no CNI here: the node's pods get theirs from the bridge plugin
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "hello",
                    "image": images["busybox"].reference,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; echo hello from a pod; sleep 3600 & wait"],
                }
            ],
        },
    }
    (tmp_path / "manifests").mkdir()
    manifest = tmp_path / "manifests" / "hello.json"
    manifest.write_text(json.dumps(pod))
    config = tmp_path / "kubelet.json"
    config.write_text(json.dumps(kubelet_configuration(tmp_path, cri_containerd)))
    kubelet = [
        *("unshare", "--mount", "--propagation", "private"),  # kubelet's mounts stay its own
        kubernetes_release.binary("kubelet"),
        f"--config={config}",
        f"--root-dir={tmp_path / 'kubelet'}",
        "-v=3",  # its events in its log
    ]
    log_path = tmp_path / "kubelet.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([str(part) for part in kubelet], stdout=log, stderr=subprocess.STDOUT)
        try:
            reference = images["busybox"].reference
            already_present = f'reason="Pulled" message="Container image \\"{reference}\\" already present'
            wait_for(lambda: already_present in log_path.read_text(), f"kubelet's {already_present}", 60)
            pod_logs = tmp_path / "pods"
            wait_for(
                lambda: any("hello from a pod\n" in path.read_text() for path in pod_logs.glob("*/*/*.log")),
                f"the pod's output in its log (see {log_path})",
                30,
            )
            assert 'reason="Pulling"' not in log_path.read_text()
            containers = run(*k8s_ctr, "containers", "list").splitlines()[1:]
            in_use = sorted(line.split()[1] for line in containers)
            assert in_use == [PAUSE_IMAGE, reference]  # the sandbox and the container
            manifest.unlink()  # kubelet stops the pod: its container, then its sandbox
            wait_for(lambda: not run(*k8s_ctr, "tasks", "list", "--quiet").split(), "the pod stopping", 30)
        finally:
            process.terminate()
            process.wait(timeout=30)


@needs_root
def test_containerd_imports_an_operators_archive_under_the_names_the_check_found(
    k8s_ctr: list[str | Path], tmp_path: Path, images: dict[str, ImageArchive]
) -> None:
    archive = add_image_archive(
        tmp_path / "node-images", write_archive(tmp_path / "tools.tar", operator_archive(images["busybox"]))
    )
    run(*k8s_ctr, "images", "import", archive)
    names = run(*k8s_ctr, "images", "list", "--quiet").split()
    assert set(image_archive_references(archive)) <= set(names)
    fifo_dir = tmp_path / "fifo"
    output = run(*k8s_ctr, "run", "--rm", "--fifo-dir", fifo_dir, OPERATOR_IMAGE, "tl-ops", "echo", "ops")
    assert output == "ops\n"
