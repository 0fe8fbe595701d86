"""The link between QEMU (`-tpmdev emulator`) and a VM's swtpm that shows only the allocated PCR banks.

libtpms lists every bank it implements in TPM2_GetCapability(TPM_CAP_PCRS), allocated or not (sha384 and
sha512 with empty selections), and OVMF (Debian's 2022.11 build) hashes every measured byte with each
algorithm the TPM lists, whatever the allocation: each PCR_Extend carries four digests and the TPM drops
two. Under TCG that is ~3.5 s of SHA-384/SHA-512 in OVMF's 32-bit PEI phase alone (13.5 MB of firmware
volumes). This link passes QEMU's control channel
to swtpm unchanged and, on the data channel QEMU hands over (CMD_SET_DATAFD with the descriptor), drops
the banks without any selected PCR from TPM_CAP_PCRS answers, as a TPM implementing only the allocated
banks would answer: the firmware then hashes with the allocated banks only. Every other command and
answer passes unchanged, so PCR values and the event log are the same.

Run as `python -m trustedlaunch.tpm.bankproxy LISTEN_SOCKET SWTPM_CONTROL_SOCKET`: it prints "ready" once
it listens, serves one QEMU connection and exits when either side closes (swtpm --terminate then exits).
"""

from __future__ import annotations

import array
import contextlib
import socket
import struct
import sys
import threading
from pathlib import Path

TPM_CC_GET_CAPABILITY = 0x17A
TPM_CAP_PCRS = 5
HEADER_SIZE = 10  # tag (2), size (4), command code or response code (4)
MAX_MESSAGE = 64 * 1024
CONTROL_CHUNK = 4096
ACCEPT_TIMEOUT = 120.0


def only_allocated_banks(command: bytes, response: bytes) -> bytes:
    """`response` without the banks that have no PCR selected if it answers GetCapability(TPM_CAP_PCRS)
    with success; any other response unchanged (also one that would keep no bank)."""
    if len(command) < 14 or struct.unpack(">II", command[6:14]) != (TPM_CC_GET_CAPABILITY, TPM_CAP_PCRS):
        return response
    tag, _, code = struct.unpack(">HII", response[:HEADER_SIZE])
    if code != 0 or len(response) < 19:
        return response
    count = struct.unpack(">I", response[15:19])[0]
    offset, kept = 19, []
    for _ in range(count):
        if offset + 3 > len(response) or offset + 3 + response[offset + 2] > len(response):
            return response  # malformed: not ours to repair
        selection = response[offset : offset + 3 + response[offset + 2]]
        if any(selection[3:]):
            kept.append(selection)
        offset += len(selection)
    if not kept or len(kept) == count:
        return response
    body = response[HEADER_SIZE:15] + struct.pack(">I", len(kept)) + b"".join(kept) + response[offset:]
    return struct.pack(">HII", tag, HEADER_SIZE + len(body), code) + body


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _read_message(sock: socket.socket) -> bytes | None:
    """One TPM command or response (None at end of stream or on a malformed size)."""
    header = _read_exactly(sock, HEADER_SIZE)
    if header is None:
        return None
    size = struct.unpack(">I", header[2:6])[0]
    if not HEADER_SIZE <= size <= MAX_MESSAGE:
        return None
    rest = _read_exactly(sock, size - HEADER_SIZE)
    return None if rest is None else header + rest


def _relay_commands(qemu: socket.socket, tpm: socket.socket) -> None:
    """QEMU's TPM commands to swtpm and swtpm's answers back (one at a time, as QEMU sends them)."""
    with qemu, tpm:
        try:
            while (command := _read_message(qemu)) is not None:
                tpm.sendall(command)
                response = _read_message(tpm)
                if response is None:
                    return
                qemu.sendall(only_allocated_banks(command, response))
        except OSError:
            return


def _copy(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(CONTROL_CHUNK):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_RDWR)


def _forward_control(qemu: socket.socket, tpm: socket.socket) -> None:
    """QEMU's control channel to swtpm; the data channel descriptor it passes is replaced by our own."""
    descriptor_space = socket.CMSG_SPACE(4 * array.array("i").itemsize)
    while True:
        data, ancillary, _, _ = qemu.recvmsg(CONTROL_CHUNK, descriptor_space)
        if not data:
            return
        descriptors = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                descriptors.frombytes(payload[: len(payload) - len(payload) % descriptors.itemsize])
        if not descriptors:
            tpm.sendall(data)
            continue
        qemu_data = socket.socket(fileno=descriptors[0])
        for extra in descriptors[1:]:
            socket.socket(fileno=extra).close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs:
            tpm.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
        threading.Thread(target=_relay_commands, args=(qemu_data, ours), daemon=True).start()


def serve(listen_path: Path, swtpm_control: Path) -> None:
    """Accept QEMU on `listen_path`, connect to swtpm's control socket and link the two until one closes."""
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(listen_path))
        server.listen(1)
        server.settimeout(ACCEPT_TIMEOUT)
        print("ready", flush=True)
        sys.stdout.close()
        try:
            qemu, _ = server.accept()
        except TimeoutError:
            return
        finally:
            listen_path.unlink(missing_ok=True)
    qemu.settimeout(None)
    with qemu, socket.socket(socket.AF_UNIX) as tpm:
        tpm.connect(str(swtpm_control))
        threading.Thread(target=_copy, args=(tpm, qemu), daemon=True).start()
        with contextlib.suppress(OSError):
            _forward_control(qemu, tpm)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]))
