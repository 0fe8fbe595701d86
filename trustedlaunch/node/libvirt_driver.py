"""The libvirt node driver: a node VM as a libvirt domain on a libvirt host (trustedlaunch.node.driver).

The domain boots the node image as the direct driver does (q35, OVMF Secure Boot code and the varstore
template of the node's policy, SMM, TCG with a 128 MiB translation cache, one vCPU, 512 MiB), its agent's
port (ttyS1) a pty that the driver reaches through a libvirt console stream. Where its files are depends on
whether the host shares this machine's files (`LibvirtDriver(uri, local_files=...)`):

- local files (a private libvirtd here, or the local one): the ESP as a read-only virtual FAT disk on the
  virtio bus (QEMU's vvfat serves the image's folder; libvirt allows a `type='dir'` disk only read-only,
  and QEMU's IDE disks cannot be read-only), the firmware from /usr/share/OVMF, the varstore and the serial
  console (ttyS0) log in the run directory, and `<tpm><backend type='external'>`: the node's own vTPM
  (swtpm behind the bank proxy that shows OVMF only the allocated PCR bank), started as the direct driver
  starts it (or libvirt's own swtpm with `host_tpm`);
- a remote host (`local_files=False`): the domain names only the host's volumes and libvirt's own paths.
  The ESP as a FAT disk image, the dm-verity root filesystem and the OVMF code and varstore template the
  node's policy was predicted from are volumes of the host's pool (trustedlaunch.node.libvirt_volumes:
  content-addressed, uploaded once per build, checked byte for byte, so every host boots the firmware the
  policy was predicted from; the domain's metadata records their SHA-256); the varstore is libvirt's copy
  of the template in the host's own nvram folder; the serial console is a pty whose console stream the
  driver pumps into the run directory's console.log (its tail kept: console_tail and the boot-failure
  check read it as for local files); the TPM is libvirt's own swtpm (`<backend type='emulator'>`), its
  EK certified by the host's EK CA (the host's /etc/swtpm_setup.conf names it).

In both, the root filesystem disk, when the image has one, is the first virtio disk (/dev/vda) as the agent
expects, and the ESP the only boot device. Destroying a node's domain removes what the driver made on the
host (the domain, its varstore and its TPM state) and keeps the image volumes.

The agent channel is trustedlaunch.node.channel.AgentChannel over one end of a socket pair whose other end
libvirt's event loop (one thread per process, as `virsh console` runs it) pumps to and from the console
stream: a blocking stream read from a thread loses the agent's answers.

The network (`NodeNetwork`, when given) is the direct driver's, passed through to QEMU
(`qemu_commandline_xml`). libvirt 9.0's own choices do not isolate the guest: `<interface type='user'>`
with the passt backend (Debian 12's passt 0.0~git20230309) lets the guest open TCP and UDP connections to
every address the host routes to, and by default maps the gateway address to the host's loopback (the
control plane's etcd and every cluster's apiserver on a local host): passt has no destination filter (only
all of TCP off, `--no-tcp`), and libvirt passes it neither that nor `--no-map-gw`; the slirp backend takes
no `restrict`, `guestfwd` or `hostfwd`. So the domain carries QEMU's own `-netdev user,restrict=on` with the
apiserver `guestfwd` and kubelet `hostfwd` (trustedlaunch.node.kubelet) in `<qemu:commandline>`, one
network code path for both drivers. The `guestfwd`'s `cmd:` makes QEMU start a `busybox nc` per connection
(fork, setsid, exec), which QEMU's seccomp sandbox as libvirt sets it forbids (`spawn=deny`,
`elevateprivileges=deny`: the child dies of SIGSYS and the guest's connection with it): a libvirt host for
node VMs has `seccomp_sandbox = 0` in its qemu.conf (libvirt then passes `-sandbox off`) and each domain,
with a network or not, asks for the rest of the sandbox back (QEMU_SANDBOX: obsolete system calls and
resource control still denied); the host needs busybox at trustedlaunch.node.image.BUSYBOX.

"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

import libvirt

from trustedlaunch.node.agent_client import NodeAgent, NodeQuote
from trustedlaunch.node.channel import AgentChannel, RootfsStatus
from trustedlaunch.node.esp_disk import esp_disk
from trustedlaunch.node.image import BUSYBOX, NodeImage, NodeImageError
from trustedlaunch.node.kubelet import NodeNetwork
from trustedlaunch.node.libvirt_volumes import POOL_NAME, HostVolume, ImageVolumeError, ImageVolumes
from trustedlaunch.node.qemu import (
    AGENT_COMMAND_TIMEOUT,
    ESP_COPY,
    FIRMWARE,
    NODE_MEMORY_MIB,
    NODE_VCPUS,
    VARSTORE_COPY,
    BootFailedError,
    BootingVM,
    NodeVMError,
    readable_tail,
)
from trustedlaunch.tpm.vtpm import Vtpm

TB_CACHE_MIB = 128  # trustedlaunch.node.qemu.TCG_ACCEL's tb-size
AGENT_SERIAL = "serial1"  # the alias libvirt gives the second serial port (the agent's ttyS1)
CONSOLE_SERIAL = "serial0"  # the serial console (ttyS0)
MAX_CONSOLE_LOG = 1024 * 1024  # bytes of a remote domain's console log kept here (then its last half)
METADATA_NS = "https://trustedlaunch.dev/libvirt/node/1"  # our element in a domain's <metadata>
STREAM_CHUNK = 64 * 1024
KEEPALIVE_INTERVAL = 5  # seconds between libvirt keepalive messages on a driver's connection ...
KEEPALIVE_COUNT = 3  # ... and how many may go unanswered before libvirt closes it
OPEN_TIMEOUT = 15.0  # seconds a driver's connection to its host may take to open
MAX_CONSOLE_BACKLOG = 1024 * 1024  # bytes a console bridge holds for a side that does not take them
DOMAIN_PREFIX = "tl-node-"
# what undefining a node domain removes with it (varstore, libvirt's own vTPM state), then less for a host's
# libvirt that refuses a flag it does not know
UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_TPM,
    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
    0,
)
MAX_DOMAIN_XML = 1024 * 1024  # bytes of a domain definition read back from its host
QEMU_XML_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
# QEMU's seccomp sandbox as libvirt sets it, less `spawn=deny` and `elevateprivileges=deny`: the network's
# guestfwd forks and execs busybox nc, and libslirp's child calls setsid() first (which that set denies)
QEMU_SANDBOX = "on,obsolete=deny,resourcecontrol=deny"
# The NIC's slot on the q35 root bus: QEMU would give it the first free slot before libvirt's own devices
# are added, taking the slot libvirt gives its PCIe root ports; libvirt fills slots from 1 up (and 0x1f)
NIC_PCI_SLOT = "0x10"
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "its guest powered off",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "it was destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "its guest crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "QEMU failed to start",
}

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def _ignore_libvirt_error(_context: object, _error: object) -> None:
    """libvirt's error callback: nothing (the error is raised to the caller as a libvirtError)."""


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once per process). Must come
    before the connections whose streams use it are opened. Also silences libvirt's default error handler,
    which prints every failed call to stderr (a dead host's check every interval): each failure reaches its
    caller as a libvirtError, which says it where it matters."""
    global _event_loop_started
    with _event_loop_lock:
        if not _event_loop_started:
            libvirt.registerErrorHandler(_ignore_libvirt_error, None)
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
            _event_loop_started = True


def _open_within(uri: str, timeout: float) -> libvirt.virConnect:
    """libvirt.open(uri) given `timeout` seconds: libvirt's open has no deadline of its own (a host that
    accepts the connection and never answers holds it), so it runs in a daemon thread, left to end when the
    host answers or the connection fails, its late connection then closed. TimeoutError naming the URI."""
    outcome: list[libvirt.virConnect | libvirt.libvirtError] = []
    lock, done = threading.Lock(), threading.Event()

    def run() -> None:
        try:
            result: libvirt.virConnect | libvirt.libvirtError = libvirt.open(uri)
        except libvirt.libvirtError as error:
            result = error
        with lock:
            if done.is_set():  # abandoned: nobody takes it
                if isinstance(result, libvirt.virConnect):
                    with contextlib.suppress(libvirt.libvirtError):
                        result.close()
                return
            outcome.append(result)
            done.set()

    threading.Thread(target=run, name=f"libvirt-open {uri[:40]}", daemon=True).start()
    done.wait(timeout)
    with lock:
        if not outcome:
            done.set()
            raise TimeoutError(f"the libvirt host {uri} did not answer within {timeout:g} s")
    if isinstance(outcome[0], libvirt.libvirtError):
        raise outcome[0]
    return outcome[0]


def open_host(
    uri: str, keepalive_interval: int, keepalive_count: int, timeout: float | None = None
) -> libvirt.virConnect:
    """A connection to the libvirt host at `uri` (libvirt's event loop running) that libvirt closes once
    `keepalive_count` keepalive messages, `keepalive_interval` s apart, go unanswered; libvirtError when it
    cannot be made, TimeoutError when the host does not answer within `timeout` seconds (None: no bound). A
    driver inside this process (test:///) has no peer to keep alive: no keepalive then."""
    ensure_event_loop()
    connection = libvirt.open(uri) if timeout is None else _open_within(uri, timeout)
    try:
        connection.setKeepAlive(keepalive_interval, keepalive_count)
    except libvirt.libvirtError as error:
        if error.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            with contextlib.suppress(libvirt.libvirtError):
                connection.close()
            raise
    return connection


class ConsoleBacklogFullError(OSError):
    """A console bridge's backlog would exceed its bound: one side writes more than the other takes."""


class ConsoleBacklog:
    """The bytes one side of a console bridge sent that the other side has not taken yet, at most `limit`
    bytes (a guest writing its console without end while nobody reads it cannot grow the host's memory)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._data = bytearray()

    def __len__(self) -> int:
        return len(self._data)

    def add(self, data: bytes) -> None:
        """Queue `data`; ConsoleBacklogFullError if the backlog would then exceed its bound."""
        if len(self._data) + len(data) > self.limit:
            raise ConsoleBacklogFullError(
                f"more than {self.limit} bytes waiting ({len(self._data)} queued, {len(data)} more)"
            )
        self._data += data

    def drain(self, send: Callable[[bytes], int]) -> None:
        """Hand the backlog to `send` (returns the bytes it took; 0 or less: it takes none now) until it is
        empty or `send` takes no more. Never blocks when `send` does not."""
        while self._data:
            sent = send(bytes(self._data[:STREAM_CHUNK]))
            if sent <= 0:
                return
            del self._data[:sent]

    def drain_to_socket(self, sock: socket.socket) -> None:
        """`drain` into a non-blocking socket."""

        def send(data: bytes) -> int:
            try:
                return sock.send(data)
            except BlockingIOError:
                return 0

        self.drain(send)


class _ConsoleBridge:
    """Pumps a domain's console stream to and from one end of a socket pair, in libvirt's event loop (one
    thread for every domain of the process: nothing here may block it); the other end is the agent
    channel's socket. Each direction has a bounded backlog: while the socket cannot take the guest's bytes,
    the stream is not read (its READABLE event dropped) and the socket watched for WRITABLE; while the
    stream cannot take the host's bytes, the socket is not read. A backlog over its bound closes this bridge
    only (`close_reason` says why)."""

    def __init__(self, connection: libvirt.virConnect, domain: libvirt.virDomain, device: str):
        self.name = domain.name()
        self._ours, self.theirs = socket.socketpair()
        self._ours.setblocking(False)
        self._to_host = ConsoleBacklog(MAX_CONSOLE_BACKLOG)  # from the guest, not yet taken by the socket
        self._to_guest = ConsoleBacklog(MAX_CONSOLE_BACKLOG)  # from the host, not yet taken by the stream
        self._lock = threading.Lock()
        self._closed = False
        self.close_reason = ""
        self._stream = connection.newStream(libvirt.VIR_STREAM_NONBLOCK)
        domain.openConsole(device, self._stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self._stream.eventAddCallback(self._stream_events(), self._on_stream, None)
        self._watch = libvirt.virEventAddHandle(
            self._ours.fileno(), self._socket_events(), self._on_socket, None
        )

    def _stream_events(self) -> int:
        events = libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP
        events |= libvirt.VIR_STREAM_EVENT_WRITABLE if self._to_guest else 0
        return events | (0 if self._to_host else libvirt.VIR_STREAM_EVENT_READABLE)

    def _socket_events(self) -> int:
        events = libvirt.VIR_EVENT_HANDLE_WRITABLE if self._to_host else 0
        return events | (0 if self._to_guest else libvirt.VIR_EVENT_HANDLE_READABLE)

    def _update_events(self) -> None:
        self._stream.eventUpdateCallback(self._stream_events())
        libvirt.virEventUpdateHandle(self._watch, self._socket_events())

    def _on_stream(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if events & libvirt.VIR_STREAM_EVENT_READABLE:  # (also one dispatched before the last update)
                    data = stream.recv(STREAM_CHUNK)
                    if data == b"":
                        raise OSError("console stream ended")
                    if isinstance(data, bytes):  # else -2: nothing to read now
                        self._to_host.add(data)
                        self._to_host.drain_to_socket(self._ours)
                if events & libvirt.VIR_STREAM_EVENT_WRITABLE:
                    self._to_guest.drain(self._stream.send)
                if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
                    raise OSError("console stream failed")
                self._update_events()
            except (OSError, libvirt.libvirtError) as error:
                self._close_locked(f"{error}")

    def _on_socket(self, _watch: int, _fd: int, events: int, _opaque: object) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if events & libvirt.VIR_EVENT_HANDLE_WRITABLE:
                    self._to_host.drain_to_socket(self._ours)
                if events & libvirt.VIR_EVENT_HANDLE_READABLE:
                    self._from_socket()
                self._update_events()
            except (OSError, libvirt.libvirtError) as error:
                self._close_locked(f"{error}")

    def _from_socket(self) -> None:
        try:
            data = self._ours.recv(STREAM_CHUNK)
        except BlockingIOError:
            return
        if not data:
            raise OSError("agent channel closed")
        self._to_guest.add(data)
        self._to_guest.drain(self._stream.send)

    def _close_locked(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = f"the console bridge of domain {self.name} closed: {reason}"
        libvirt.virEventRemoveHandle(self._watch)
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.eventRemoveCallback()
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.abort()
        self._ours.close()  # the channel's reader sees the port closed

    @property
    def closed(self) -> bool:
        """True once the bridge stopped pumping."""
        return self._closed

    def close(self) -> None:
        """Stop pumping and close the stream and our end of the pair."""
        with self._lock:
            self._close_locked("closed by the host")


class _BridgedChannel(AgentChannel):
    """An agent channel whose socket is a console bridge's: closing it closes the bridge too."""

    def __init__(self, bridge: _ConsoleBridge):
        super().__init__(bridge.theirs)
        self._bridge = bridge

    @property
    def bridge_closed(self) -> bool:
        """True once the console stream ended (the domain stopped, or another client took the console)."""
        return self._bridge.closed

    @property
    def close_reason(self) -> str:
        """Why the bridge closed (empty while it pumps)."""
        return self._bridge.close_reason

    def close(self) -> None:
        super().close()
        self._bridge.close()


class ConsoleLogFile:
    """An append-only log file that keeps at most `limit` bytes: past them, only its last half (replaced
    atomically: a reader such as readable_tail sees the old file or the new one)."""

    def __init__(self, path: Path, limit: int = MAX_CONSOLE_LOG):
        self.path, self.limit = path, limit
        self._log = path.open("ab")

    def append(self, data: bytes) -> None:
        """Add `data` at the end (then keep the last half if the log is over its bound)."""
        self._log.write(data)
        self._log.flush()
        if self._log.tell() > self.limit:
            self._log.close()
            with self.path.open("rb") as log:
                log.seek(-(self.limit // 2), os.SEEK_END)
                tail = log.read()
            partial = self.path.with_name(self.path.name + ".tail")
            partial.write_bytes(tail)
            os.replace(partial, self.path)
            self._log = self.path.open("ab")

    def close(self) -> None:
        """Close the file (it stays)."""
        self._log.close()


class _ConsoleLog:
    """Pumps a domain's serial console stream into a local ConsoleLogFile, in libvirt's event loop (nothing
    here blocks it but a local append): console_tail and the boot-failure check read it as they read the
    log QEMU writes for a local domain."""

    def __init__(self, connection: libvirt.virConnect, domain: libvirt.virDomain, path: Path):
        self._lock = threading.Lock()
        self._closed = False
        self._log = ConsoleLogFile(path)
        self._stream = connection.newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            domain.openConsole(CONSOLE_SERIAL, self._stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            events = libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
            self._stream.eventAddCallback(events | libvirt.VIR_STREAM_EVENT_HANGUP, self._on_stream, None)
        except libvirt.libvirtError:
            self._log.close()
            raise

    def _on_stream(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if events & libvirt.VIR_STREAM_EVENT_READABLE:
                    data = stream.recv(STREAM_CHUNK)
                    if data == b"":
                        raise OSError("console stream ended")
                    if isinstance(data, bytes):  # else -2: nothing to read now
                        self._log.append(data)
                if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
                    raise OSError("console stream ended")
            except (OSError, libvirt.libvirtError):
                self._close_locked()

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.eventRemoveCallback()
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.abort()
        self._log.close()

    def close(self) -> None:
        """Stop pumping (the log stays)."""
        with self._lock:
            self._close_locked()


@dataclass(frozen=True)
class NodeVolumes:
    """The host's volumes a node VM on a remote host boots (trustedlaunch.node.libvirt_volumes)."""

    esp: HostVolume
    rootfs: HostVolume | None
    firmware_code: HostVolume
    varstore_template: HostVolume


def node_volumes(volumes: ImageVolumes, image: NodeImage, secure_boot: bool) -> NodeVolumes:
    """Upload what a node of `image` boots (when its host does not hold it yet): the ESP as a FAT disk image,
    the root filesystem and the OVMF code and varstore template of its policy."""
    code, template = FIRMWARE[secure_boot]
    rootfs = image.rootfs
    return NodeVolumes(
        esp=volumes.volume(esp_disk(image), "esp"),
        rootfs=None
        if rootfs is None
        else volumes.volume(rootfs.path, "rootfs", rootfs.data_size + rootfs.hash_size),
        firmware_code=volumes.volume(code, "ovmf-code"),
        varstore_template=volumes.volume(template, "ovmf-vars"),
    )


def _disk(source: str, target: str, *, kind: str, driver: str, boot: bool) -> str:
    source_attribute = "dir" if kind == "dir" else "file"
    return (
        f"<disk type='{kind}' device='disk'><driver name='qemu' type='{driver}'/>"
        f"<source {source_attribute}={quoteattr(source)}/><target dev='{target}' bus='virtio'/><readonly/>"
        + ("<boot order='1'/>" if boot else "")
        + "</disk>"
    )


def _volume_disk(volume: HostVolume, target: str, *, boot: bool) -> str:
    return (
        "<disk type='volume' device='disk'><driver name='qemu' type='raw'/>"
        f"<source pool='{POOL_NAME}' volume={quoteattr(volume.name)}/>"
        f"<target dev='{target}' bus='virtio'/><readonly/>"
        + ("<boot order='1'/>" if boot else "")
        + "</disk>"
    )


def _disks_xml(image: NodeImage, volumes: NodeVolumes | None) -> str:
    """The root filesystem disk (/dev/vda) when the image has one, then the ESP (the boot device)."""
    esp_target = "vdb" if image.rootfs is not None else "vda"
    if volumes is not None:
        disks = [] if volumes.rootfs is None else [_volume_disk(volumes.rootfs, "vda", boot=False)]
        return "".join([*disks, _volume_disk(volumes.esp, esp_target, boot=True)])
    disks = []
    if image.rootfs is not None:
        disks.append(_disk(str(image.rootfs.path), "vda", kind="file", driver="raw", boot=False))
    disks.append(_disk(str(image.esp_dir), esp_target, kind="dir", driver="fat", boot=True))
    return "".join(disks)


def _firmware_xml(secure_boot: bool, run_dir: Path, volumes: NodeVolumes | None) -> str:
    """The OVMF loader and the varstore (a copy of the template: ours in the run directory, or libvirt's
    in the host's own nvram folder)."""
    code, template = FIRMWARE[secure_boot]
    secure = "yes" if secure_boot else "no"
    if volumes is not None:
        loader, nvram = (
            volumes.firmware_code.path,
            f"<nvram template={quoteattr(volumes.varstore_template.path)}/>",
        )
    else:
        loader = str(code)
        nvram = f"<nvram template={quoteattr(str(template))}>{escape(str(run_dir / VARSTORE_COPY))}</nvram>"
    return f"<loader readonly='yes' secure='{secure}' type='pflash'>{escape(loader)}</loader>{nvram}"


def _serials_xml(run_dir: Path, remote: bool) -> str:
    """The serial console (ttyS0: a log file in the run directory, or a pty the driver pumps into it) and
    the agent's port (ttyS1, a pty)."""
    log = f"<source path={quoteattr(str(run_dir / 'console.log'))}/>"
    console = "<serial type='pty'>" if remote else f"<serial type='file'>{log}"
    return f"{console}<target port='0'/></serial><serial type='pty'><target port='1'/></serial>"


def _tpm_xml(tpm_socket: Path | None, host_tpm: bool) -> str:
    if host_tpm:  # libvirt runs swtpm; only the sha256 bank allocated (OVMF still hashes every bank)
        return (
            "<tpm model='tpm-tis'><backend type='emulator' version='2.0'>"
            "<active_pcr_banks><sha256/></active_pcr_banks></backend></tpm>"
        )
    if tpm_socket is None:
        return ""
    return (
        "<tpm model='tpm-tis'><backend type='external'>"
        f"<source type='unix' mode='connect' path={quoteattr(str(tpm_socket))}/></backend></tpm>"
    )


def _metadata_xml(run_dir: Path, volumes: NodeVolumes | None) -> str:
    """Our element in the domain's metadata: the run directory it belongs to (adoption checks it) and the
    folder of run directories that holds it (one control plane's: `owned_domains`), both as digests (the
    host learns none of our paths), and, on a remote host, the SHA-256 of the firmware volumes it boots."""
    firmware = ""
    if volumes is not None:
        code, template = volumes.firmware_code.sha256, volumes.varstore_template.sha256
        firmware = f" firmwareCode='{code}' varstoreTemplate='{template}'"
    ids = f"runDir='{run_dir_id(run_dir)}' owner='{run_dir_id(run_dir.parent)}'"
    return f"<metadata><tl:node xmlns:tl='{METADATA_NS}' {ids}{firmware}/></metadata>"


def domain_start_tag() -> str:
    """The `<domain>` start tag, declaring the qemu namespace of `qemu_commandline_xml`."""
    return f"<domain type='qemu' xmlns:qemu={quoteattr(QEMU_XML_NAMESPACE)}>"


def qemu_commandline_xml(network: NodeNetwork | None, busybox: Path = BUSYBOX) -> str:
    """What the domain passes through to QEMU (`<qemu:commandline>`): QEMU's sandbox (QEMU_SANDBOX: the
    host's libvirt passes `-sandbox off`) and, with `network`, the VM's network (see the module's docstring:
    the direct driver's user network on a virtio NIC at NIC_PCI_SLOT; without it the VM has no NIC, as
    libvirt adds none by itself); `busybox`: its path on the VM's host."""
    arguments = ["-sandbox", QEMU_SANDBOX]
    if network is not None:
        arguments += ["-netdev", network.netdev(busybox)]
        arguments += ["-device", f"virtio-net-pci,netdev=net0,bus=pcie.0,addr={NIC_PCI_SLOT}"]
    values = "".join(f"<qemu:arg value={quoteattr(argument)}/>" for argument in arguments)
    return f"<qemu:commandline>{values}</qemu:commandline>"


def domain_xml(
    name: str,
    image: NodeImage,
    run_dir: Path,
    *,
    secure_boot: bool,
    tpm_socket: Path | None,
    host_tpm: bool = False,
    volumes: NodeVolumes | None = None,
    network: NodeNetwork | None = None,
) -> str:
    """The libvirt domain definition of a node VM (see the module's docstring); `host_tpm`: a TPM that
    libvirt makes and runs on the host (its EK certified by the host's CA) instead of ours at `tpm_socket`;
    `volumes`: a remote host's volumes, so that the definition names none of this machine's paths;
    `network`: the VM's only network (none without it)."""
    return f"""{domain_start_tag()}
  <name>{escape(name)}</name>
  {_metadata_xml(run_dir, volumes)}
  <memory unit='MiB'>{NODE_MEMORY_MIB}</memory>
  <vcpu>{NODE_VCPUS}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    {_firmware_xml(secure_boot, run_dir, volumes)}
  </os>
  <features><acpi/>{"<smm state='on'/>" if secure_boot else ""}
    <tcg><tb-cache unit='MiB'>{TB_CACHE_MIB}</tb-cache></tcg></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    {_disks_xml(image, volumes)}
    {_serials_xml(run_dir, volumes is not None)}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    {_tpm_xml(tpm_socket, host_tpm)}
  </devices>
  {qemu_commandline_xml(network)}
</domain>"""


class LibvirtNodeVM(BootingVM):
    """A node VM as a libvirt domain (trustedlaunch.node.driver.NodeMachine; context manager). With
    `volumes` (a remote host's image volumes) it boots from the host's volumes and its console is pumped
    here; an adopted domain (`domain`) whose console is a pty is pumped too."""

    def __init__(
        self,
        connection: libvirt.virConnect,
        image: NodeImage | None,
        run_dir: Path,
        *,
        secure_boot: bool = True,
        vtpm: Vtpm | None = None,
        domain: libvirt.virDomain | None = None,
        host_tpm: bool = False,
        volumes: ImageVolumes | None = None,
        network: NodeNetwork | None = None,
    ):
        self._connection, self.host_tpm, self._image_volumes = connection, host_tpm, volumes
        self.network = network
        self.image, self.run_dir, self.secure_boot, self.vtpm = image, run_dir, secure_boot, vtpm
        self.console_log = run_dir / "console.log"
        self._domain = domain
        self._channel: AgentChannel | None = None
        self._agent_client: NodeAgent | None = None
        self._console: _ConsoleLog | None = None
        self._started_at = time.monotonic()
        self.ready_after: float | None = None
        self.rootfs_status: RootfsStatus | None = None  # how the image's root filesystem came up
        self.volumes: NodeVolumes | None = None  # the host's volumes it boots (remote hosts)
        if domain is not None and _console_is_pty(domain):  # adopted: pump its console again
            run_dir.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(libvirt.libvirtError):  # (then console_tail shows the log so far)
                self._console = _ConsoleLog(connection, domain, self.console_log)

    def __enter__(self) -> LibvirtNodeVM:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    @property
    def handle(self) -> str:
        """The domain's UUID (empty before start)."""
        return self._domain.UUIDString() if self._domain is not None else ""

    @property
    def varstore_path(self) -> Path:
        """The varstore template the domain's varstore was copied from (the node policy's; on a remote
        host the copy is the host's): the Secure Boot keys the VM booted under."""
        return FIRMWARE[self.secure_boot][1]

    @property
    def esp_path(self) -> Path:
        """The image's ESP folder (a remote host boots an upload of it); a missing path when adopted."""
        return self.image.esp_dir if self.image is not None else self.run_dir / ESP_COPY

    @property
    def domain_name(self) -> str:
        """The domain's name on its host (empty before start)."""
        return self._domain.name() if self._domain is not None else ""

    @property
    def running(self) -> bool:
        """True while the domain is active."""
        try:
            return self._domain is not None and bool(self._domain.isActive())
        except libvirt.libvirtError:
            return False

    def start(self) -> None:
        """Upload the image's volumes (remote hosts), start the vTPM, define the domain and start it (paused
        until its console is pumped, on a remote host: nothing the guest writes is lost)."""
        if self._domain is not None:
            raise NodeVMError(f"node VM in {self.run_dir} was already started")
        if self.image is None or not self.image.esp_dir.is_dir():
            raise NodeVMError(f"node VM in {self.run_dir}: its image's ESP is missing: build the image first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.console_log.unlink(missing_ok=True)
        (self.run_dir / VARSTORE_COPY).unlink(missing_ok=True)  # libvirt copies the template anew
        if self._image_volumes is not None:
            try:
                self.volumes = node_volumes(self._image_volumes, self.image, self.secure_boot)
            except (ImageVolumeError, NodeImageError) as error:
                raise NodeVMError(f"node VM in {self.run_dir}: {error}") from error
        tpm_socket = self.vtpm.start() if self.vtpm is not None else None
        try:
            name = DOMAIN_PREFIX + secrets.token_hex(4)
            xml = domain_xml(
                name,
                self.image,
                self.run_dir,
                secure_boot=self.secure_boot,
                tpm_socket=tpm_socket,
                host_tpm=self.host_tpm,
                volumes=self.volumes,
                network=self.network,
            )
            self._domain = self._connection.defineXML(xml)
            self._started_at = time.monotonic()
            if self.volumes is None:
                self._domain.create()
            else:
                self._domain.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
                self._console = _ConsoleLog(self._connection, self._domain, self.console_log)
                self._domain.resume()
        except BaseException as error:
            self.destroy()
            if isinstance(error, libvirt.libvirtError):
                raise NodeVMError(f"libvirt did not start the node VM in {self.run_dir}: {error}") from None
            raise

    def console_tail(self) -> str:
        """The end of the serial console (its log file in the run directory)."""
        return readable_tail(self.console_log)

    def _stop_reason(self) -> str | None:
        if self.running:
            return None
        try:
            state, reason = self._domain.state() if self._domain is not None else (None, None)
        except libvirt.libvirtError as error:
            return f"the domain is gone ({error.get_error_message()})"
        if state == libvirt.VIR_DOMAIN_SHUTOFF:
            return f"the domain shut off: {_SHUTOFF_REASONS.get(reason, f'reason {reason}')}"
        return f"the domain is not running (state {state})"

    def _boot_failed(self, reason: str) -> BootFailedError:
        return BootFailedError(f"node VM ({self.run_dir}) did not boot: {reason}", self.console_tail())

    def _open_channel(self) -> AgentChannel | None:
        assert self._domain is not None
        try:
            return _BridgedChannel(_ConsoleBridge(self._connection, self._domain, AGENT_SERIAL))
        except libvirt.libvirtError:
            return None

    def _started(self) -> bool:
        return self._domain is not None

    def _agent_channel(self) -> AgentChannel | None:
        """The kept channel, or a new console bridge (a closed bridge is dropped first)."""
        if isinstance(self._channel, _BridgedChannel) and self._channel.bridge_closed:
            self._channel.close()
            self._channel = None
        return self._channel if self._channel is not None else self._open_channel()

    def agent(self) -> NodeAgent:
        """The verifier's side of the node's agent (after `wait_ready`); NodeVMError naming the node once its
        console bridge closed (the domain stopped, or its guest wrote more than the bridge holds)."""
        if isinstance(self._channel, _BridgedChannel) and self._channel.bridge_closed:
            raise NodeVMError(f"the agent of node VM {self.run_dir} failed: {self._channel.close_reason}")
        if self._channel is None:
            if self._domain is None or not self.running:
                raise NodeVMError("the node's agent is not ready: call wait_ready() first")
            self._channel = self._open_channel()
            if self._channel is None:
                raise NodeVMError(f"cannot open the agent's console stream of node VM {self.run_dir}")
        if self._agent_client is None:
            self._agent_client = NodeAgent(self._channel, AGENT_COMMAND_TIMEOUT)
        return self._agent_client

    def request_quote(self, nonce: bytes) -> NodeQuote:
        """Have the node quote its PCRs over `nonce` (trustedlaunch.attest.remote.AgentLike)."""
        return self.agent().request_quote(nonce)

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential in the node's TPM; the recovered secret."""
        return self.agent().activate(credential_blob, encrypted_secret)

    def ek_certificate(self) -> bytes:
        """The node TPM's RSA EK certificate (DER)."""
        return self.agent().ek_certificate()

    def _close_agent(self) -> None:
        if self._agent_client is not None:
            self._agent_client.close()
            self._agent_client = None
        elif self._channel is not None:
            self._channel.close()
        self._channel = None

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the domain (destroy: the guest holds nothing to flush) and the vTPM; the domain stays
        defined. Safe to call more than once."""
        self._close_agent()
        if self._console is not None:
            self._console.close()
            self._console = None
        try:
            if self.running:
                assert self._domain is not None
                with contextlib.suppress(libvirt.libvirtError):
                    self._domain.destroy()
        finally:
            if self.vtpm is not None:
                self.vtpm.stop()

    def destroy(self) -> None:
        """Stop the domain and the vTPM and undefine the domain with its varstore and (libvirt's own
        vTPM) its TPM state; the image volumes stay for other nodes."""
        self.shutdown()
        domain, self._domain = self._domain, None
        if domain is not None:
            remove_domain(domain)


class LibvirtDriver:
    """Node VMs on the libvirt host at `uri` (trustedlaunch.node.driver.NodeDriver).

    `local_files`: whether the host shares this machine's files (a libvirtd here). If it does, domains
    name our files (the image's ESP folder and root filesystem, OVMF from /usr/share/OVMF, the varstore and
    console log in the run directory) and a node's TPM is the vTPM passed to `create` (ours: swtpm and the
    bank proxy here), or with `host_tpm` one that the host's libvirt makes and runs (swtpm_setup certifying
    its EK with the host's EK CA). If it does not (`local_files=False`: a remote host), domains boot from
    the host's image volumes (`volumes`), their console is pumped here, and a node with a TPM always gets
    the host's own (the vTPM passed to `create` then only says that the node has a TPM)."""

    name = "libvirt"

    def __init__(self, uri: str, *, host_tpm: bool = False, local_files: bool = True):
        self.uri, self.local_files = uri, local_files
        self.host_tpm = host_tpm or not local_files
        try:  # a host that stops answering closes the connection (calls on it fail, `alive` is False)
            self.connection = open_host(uri, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT, OPEN_TIMEOUT)
        except libvirt.libvirtError as error:
            raise NodeVMError(f"cannot reach the libvirt host {uri}: {error.get_error_message()}") from None
        except TimeoutError as error:
            raise NodeVMError(f"cannot reach the libvirt host {uri}: {error}") from None
        self.volumes = None if local_files else ImageVolumes(self.connection)

    def close(self) -> None:
        """Close the connection (the domains keep running)."""
        with contextlib.suppress(libvirt.libvirtError):
            self.connection.close()

    def create(
        self,
        image: NodeImage,
        run_dir: Path,
        *,
        secure_boot: bool,
        vtpm: Vtpm | None,
        network: NodeNetwork | None = None,
    ) -> LibvirtNodeVM:
        """A node VM (not started) booting `image` on this host; `network`: its cluster's apiserver and its
        kubelet port (trustedlaunch.node.kubelet; its addresses as this host reaches the apiserver and as
        the apiserver reaches this host), else no network."""
        host_tpm = self.host_tpm and vtpm is not None
        return LibvirtNodeVM(
            self.connection,
            image,
            run_dir,
            secure_boot=secure_boot,
            vtpm=None if host_tpm else vtpm,
            host_tpm=host_tpm,
            volumes=self.volumes,
            network=network,
        )

    def adoptable_domain(self, handle: str, run_dir: Path) -> libvirt.virDomain | None:
        """The running domain of UUID `handle` if it is a node VM of `run_dir`: its name has DOMAIN_PREFIX
        and its metadata names `run_dir` (or, defined before the metadata, its varstore and console log are
        files of `run_dir`): adopting another domain would destroy it, varstore included; None otherwise."""
        try:
            domain = self.connection.lookupByUUIDString(handle)
            if not domain.isActive() or not domain.name().startswith(DOMAIN_PREFIX):
                return None
            xml = domain.XMLDesc(0)
        except libvirt.libvirtError:
            return None
        return domain if made_for(xml, run_dir) else None

    def adopt(self, handle: str, run_dir: Path) -> LibvirtNodeVM | None:
        """The running node VM of UUID `handle` in `run_dir` (adoptable_domain); None if the host has no
        such domain. Its vTPM (started by an earlier process) is not stopped with it:
        trustedlaunch.control.node_drivers's libvirt driver adopts with that."""
        domain = self.adoptable_domain(handle, run_dir)
        return None if domain is None else LibvirtNodeVM(self.connection, None, run_dir, domain=domain)


def _console_is_pty(domain: libvirt.virDomain) -> bool:
    """Whether a domain's serial console is a pty (a remote host's domain, whose console the driver pumps)."""
    try:
        xml = domain.XMLDesc(0)
    except libvirt.libvirtError:
        return False
    definition = _parse_definition(xml)
    console = None if definition is None else definition.find("devices/serial/target[@port='0']/..")
    return console is not None and console.get("type") == "pty"


def _parse_definition(xml: str) -> ElementTree.Element | None:
    """A domain definition read back from its host (None when too large or not XML)."""
    if len(xml) > MAX_DOMAIN_XML:
        return None
    try:
        return ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None


def run_dir_id(run_dir: Path) -> str:
    """What a domain's metadata records of its run directory (and of the folder holding it): the SHA-256 of
    its path."""
    return hashlib.sha256(str(run_dir).encode()).hexdigest()


@dataclass(frozen=True)
class OwnedDomain:
    """A node domain that a run directory of one folder was made for: its name and that directory's digest."""

    domain: libvirt.virDomain
    name: str
    run_dir_id: str


@dataclass(frozen=True)
class HostDomain:
    """A domain defined on a host, running or not, with its definition (None: unreadable)."""

    domain: libvirt.virDomain
    name: str
    definition: ElementTree.Element | None


def host_domains(connection: libvirt.virConnect) -> list[HostDomain]:
    """Every domain defined on `connection`'s host with its definition, read once for the host checks'
    sweeps (a domain that goes while it is read is left out; libvirtError when the host cannot list them)."""
    found = []
    for domain in connection.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):
            name = domain.name()
            try:
                definition = _parse_definition(domain.XMLDesc(0))
            except libvirt.libvirtError:
                definition = None
            found.append(HostDomain(domain, name, definition))
    return found


def owned_domains(domains: Iterable[HostDomain], runs_dir: Path) -> list[OwnedDomain]:
    """The node domains of `domains` whose metadata names a run directory in `runs_dir` (one control
    plane's). Domains defined before the metadata named that folder are not listed: nothing tells whose
    they are."""
    owner, found = run_dir_id(runs_dir), []
    for host_domain in domains:
        definition = host_domain.definition
        if definition is None or not host_domain.name.startswith(DOMAIN_PREFIX):
            continue
        ours = definition.find(f"metadata/{{{METADATA_NS}}}node")
        if ours is not None and ours.get("owner") == owner and ours.get("runDir"):
            found.append(OwnedDomain(host_domain.domain, host_domain.name, str(ours.get("runDir"))))
    return found


def _volumes_named(definition: ElementTree.Element) -> set[str]:
    """What a domain definition names of the node-image pool: its disks' volume names and every file path
    (disk sources, loader, varstore template) as it could name a volume by its path."""
    names = {
        source.get("volume", "")
        for source in definition.iterfind("devices/disk/source")
        if source.get("pool") == POOL_NAME
    }
    names |= {source.get("file", "") for source in definition.iterfind("devices/disk/source")}
    nvram = definition.find("os/nvram")
    names |= {definition.findtext("os/loader") or "", "" if nvram is None else nvram.get("template", "")}
    return names - {""}


def unused_image_volumes(
    connection: libvirt.virConnect, domains: Iterable[HostDomain]
) -> list[libvirt.virStorageVol] | None:
    """The volumes of the host's node-image pool (POOL_NAME) that none of the host's `domains` names, by
    name or path, whoever defined it; [] when the host has no such pool; None (nothing is known unused) when
    a domain's definition could not be read."""
    named: set[str] = set()
    for domain in domains:
        if domain.definition is None:
            return None
        named |= _volumes_named(domain.definition)
    try:
        if POOL_NAME not in connection.listStoragePools():  # an inactive pool's volumes are not listed
            return []
        pool = connection.storagePoolLookupByName(POOL_NAME)
        pool.refresh(0)
        return [volume for volume in pool.listAllVolumes(0) if not {volume.name(), volume.path()} & named]
    except libvirt.libvirtError:
        return None


def remove_domain(domain: libvirt.virDomain) -> bool:
    """Stop `domain` if it runs, then undefine it with its varstore and (libvirt's own vTPM) its TPM state
    (with fewer flags where the host's libvirt knows fewer: the TPM flag came with libvirt 8.9). Whether it
    is gone (one already gone is)."""
    with contextlib.suppress(libvirt.libvirtError):
        if domain.isActive():
            domain.destroy()
    for flags in UNDEFINE_FLAGS:
        try:
            domain.undefineFlags(flags)
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return True
    return False


def made_for(xml: str, run_dir: Path) -> bool:
    """Whether a domain definition is the driver's for `run_dir`: our metadata element names it, or (a
    definition made before the metadata) its varstore and serial console log (its only serial files) are
    the files of `run_dir` the driver defined then."""
    definition = _parse_definition(xml)
    if definition is None:
        return False
    ours = definition.find(f"metadata/{{{METADATA_NS}}}node")
    if ours is not None:
        return ours.get("runDir") == run_dir_id(run_dir)
    nvram = definition.findtext("os/nvram")
    logs = [source.get("path") for source in definition.iterfind("devices/serial[@type='file']/source")]
    return nvram == str(run_dir / VARSTORE_COPY) and logs == [str(run_dir / "console.log")]
