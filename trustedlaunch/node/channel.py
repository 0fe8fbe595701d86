"""Host side of the agent protocol spoken over the node VM's second serial port (see agent/init.sh).

A request is one line; an answer is one JSON line followed by `END <sha256 hex of that line>`, so lines
damaged or left over on the serial link (e.g. answers to PINGs sent before the agent started) are skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from trustedlaunch.errors import TrustedLaunchError

_PCR_LINE = re.compile(r"^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$")
_BANK_LINE = re.compile(r"^\s{2}(\w+):\s*$")


class AgentError(TrustedLaunchError):
    """The in-guest agent did not answer, answered garbage, or reported a failure."""


@dataclass(frozen=True)
class NodeQuote:
    """What the agent returns for QUOTE: everything a verifier needs, as the TPM and tpm2-tools wrote it."""

    nonce: bytes
    ak_public: bytes  # TPM2B_PUBLIC (tpm2_createak -u, "tss" format)
    ak_name: bytes  # nameAlg || digest of the AK public area
    ek_public: bytes  # TPM2B_PUBLIC of the RSA EK (tpm2_createek -u)
    quote: bytes  # TPMS_ATTEST (tpm2_quote -m)
    signature: bytes  # TPMT_SIGNATURE (tpm2_quote -s)
    pcrs_file: bytes  # tpm2_quote -o: the PCR file tpm2_checkquote -f reads
    pcr_values: dict[str, dict[int, bytes]]  # bank -> PCR -> value, as quoted
    event_log: bytes | None  # binary_bios_measurements, None when the kernel exposes none


def parse_pcr_values(text: str) -> dict[str, dict[int, bytes]]:
    """Parse the `pcrs:` YAML block tpm2_quote prints (bank -> PCR -> value)."""
    values: dict[str, dict[int, bytes]] = {}
    bank: str | None = None
    for line in text.splitlines():
        bank_match = _BANK_LINE.match(line)
        pcr_match = _PCR_LINE.match(line)
        if bank_match:
            bank = bank_match.group(1)
            values[bank] = {}
        elif pcr_match and bank is not None:
            values[bank][int(pcr_match.group(1))] = bytes.fromhex(pcr_match.group(2))
    return values


def _b64(answer: dict[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(answer[key], validate=True)
    except (KeyError, TypeError, ValueError) as error:
        raise AgentError(
            f"agent answer to {answer.get('reply')}: field {key!r} missing or not base64"
        ) from error


class AgentChannel:
    """A connection to the agent's serial port (QEMU exposes it as a unix socket)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = b""

    def close(self) -> None:
        """Close the connection (the agent keeps running)."""
        self._sock.close()

    def _read_line(self, deadline: float) -> bytes | None:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:  # e.g. reset by QEMU exiting mid-read: the same as a closed port
                raise AgentError(f"the agent's serial port failed ({exc}): the VM stopped") from exc
            if not chunk:
                raise AgentError("the agent's serial port was closed (the VM stopped)")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def _read_answer(self, deadline: float) -> dict[str, Any] | None:
        previous: bytes | None = None
        while (line := self._read_line(deadline)) is not None:
            if previous is not None and line == b"END " + hashlib.sha256(previous).hexdigest().encode():
                try:
                    answer = json.loads(previous)
                except ValueError:
                    answer = None
                if isinstance(answer, dict):
                    return answer
            previous = line
        return None

    def request(self, line: str, reply: str, timeout: float, token: str | None = None) -> dict[str, Any]:
        """Send one request line; return the answer whose `reply` is `reply` (and `token`, if given)."""
        self._sock.settimeout(timeout)  # not the last read's remaining time
        try:
            self._sock.sendall(line.encode() + b"\n")
        except OSError as exc:  # reset, or a full buffer the serial port does not drain (guest not reading)
            raise AgentError(f"the agent's serial port takes no input ({exc})") from exc
        deadline = time.monotonic() + timeout
        while (answer := self._read_answer(deadline)) is not None:
            if answer.get("reply") == reply and (token is None or answer.get("token") == token):
                return answer
        raise AgentError(f"the agent did not answer {line.split()[0]} within {timeout:.0f} s")

    def ping(self, token: str, timeout: float) -> bool:
        """True if the agent answered PING with this token in time."""
        try:
            self.request(f"PING {token}", "PONG", timeout, token)
        except AgentError:
            return False
        return True

    @staticmethod
    def _check(answer: dict[str, Any]) -> dict[str, Any]:
        if "error" in answer:
            detail = base64.b64decode(answer.get("detail") or "").decode(errors="replace").strip()
            raise AgentError(
                f"agent: {answer['reply']} failed: {answer['error']}" + (f" ({detail})" if detail else "")
            )
        return answer

    def quote(self, nonce: bytes, timeout: float) -> NodeQuote:
        """Ask for a quote of PCRs 0-9 and 14 over `nonce`, with the keys and the event log."""
        answer = self._check(self.request(f"QUOTE {nonce.hex()}", "QUOTE", timeout))
        if answer.get("nonce", "").lower() != nonce.hex():
            raise AgentError(f"agent answered QUOTE for nonce {answer.get('nonce')!r}, not {nonce.hex()}")
        event_log = _b64(answer, "eventLog")
        return NodeQuote(
            nonce=nonce,
            ak_public=_b64(answer, "akPublic"),
            ak_name=_b64(answer, "akName"),
            ek_public=_b64(answer, "ekPublic"),
            quote=_b64(answer, "quote"),
            signature=_b64(answer, "signature"),
            pcrs_file=_b64(answer, "pcrs"),
            pcr_values=parse_pcr_values(_b64(answer, "pcrValues").decode(errors="replace")),
            event_log=event_log or None,
        )

    def activate(self, id_object: bytes, encrypted_secret: bytes, timeout: float) -> bytes:
        """TPM2_ActivateCredential with the agent's EK and AK; `id_object` and `encrypted_secret` are
        the TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET (with their size fields)."""
        request = "ACTIVATE " + " ".join(
            base64.b64encode(part).decode() for part in (id_object, encrypted_secret)
        )
        return _b64(self._check(self.request(request, "ACTIVATE", timeout)), "secret")

    def ek_certificate(self, timeout: float) -> bytes:
        """The DER EK certificate the TPM manufacturer (here swtpm_setup) stored at NV index 0x01c00002."""
        return _b64(self._check(self.request("EKCERT", "EKCERT", timeout)), "certificate")
