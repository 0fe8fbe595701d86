"""A node's TPM as the verifier uses it: EK, attestation key, quotes, credential activation, EK certificate.

The TPM commands are built and their answers checked here by the TSS (tpm2-pytss ESAPI), over any TCTI: the
node agent's relay (trustedlaunch.node.agent), or a swtpm socket. The node itself runs no TPM software but
the relay, so attesting a booted node costs a handful of serial-port round trips, not one tpm2-tools process
(a second each under TCG) per step.

Handles follow the TCG provisioning guidance: the RSA 2048 EK is persistent at 0x81010001 with its
certificate at NV index 0x01c00002 (swtpm_setup puts them there). The attestation key is made on first use:
a restricted ECDSA P-256 signing key under the EK (key generation is instant, unlike RSA's), persisted at
0x81000003 (where Azure's vTPM keeps its AK) so it survives a VM reboot and stays the enrolled AK.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from tpm2_pytss import ESAPI, TCTI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_HC, TPM2_PT_NV, TPM2_SE, TPMA_SESSION
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_TEMPLATE,
    TPML_PCR_SELECTION,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
)

from trustedlaunch.errors import TrustedLaunchError

EK_HANDLE = 0x81010001
AK_HANDLE = 0x81000003
EK_CERTIFICATE_INDEX = 0x01C00002
PERSISTENT_HANDLES = 0x81000000  # the first persistent handle (TPM2_HT_PERSISTENT << 24)
MAX_PERSISTENT_HANDLES = 64  # more than a TPM has room for
MAX_LOADED_HANDLES = 64  # more transient objects or sessions than a TPM has room for
AK_TEMPLATE = "ecc256:ecdsa-sha256:null"
AK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda"
QUOTED_PCRS = (*range(10), 14)  # 0-9 (firmware, shim, GRUB, kernel) and 14 (shim's MOK lists)
BANK = "sha256"
_Result = TypeVar("_Result")


class NodeTpmError(TrustedLaunchError):
    """A TPM command failed; the message names the step and the TPM's response code."""


@dataclass(frozen=True)
class AttestationKey:
    """The node's AK: its TPM2B_PUBLIC and its TPM name (nameAlg || digest of the public area)."""

    public: bytes
    name: bytes


def _step(what: str, exc: TSS2_Exception) -> NodeTpmError:
    return NodeTpmError(f"TPM: {what} failed: {exc}")


class NodeTpm:
    """ESAPI on one TPM. Use as a context manager, or `close()` when done.

    Each TPM command is a round trip to the node: the keys' handles and public areas are read once per
    instance, and sessions end with the command they authorize (continueSession clear: no flush)."""

    def __init__(self, tcti: TCTI, ak_template: str = AK_TEMPLATE):
        self._esapi = ESAPI(tcti)
        self._ak_template = ak_template  # of the AK made on first use (tpm2-tools syntax)
        self._objects: dict[int, tuple[ESYS_TR, bytes]] = {}  # handle -> (ESYS handle, TPM2B_PUBLIC)
        self._listed: set[int] | None = None

    def close(self) -> None:
        """Release the ESAPI context (the TPM's persistent keys stay)."""
        self._esapi.close()

    def __enter__(self) -> NodeTpm:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def flush_loaded(self) -> None:
        """Flush every transient object and loaded session: what a command whose answer never reached the
        host left in the TPM (the host is its only user: the agent relays /dev/tpm0, no resource manager)."""
        try:
            for first in (TPM2_HC.TRANSIENT_FIRST, TPM2_HC.HMAC_SESSION_FIRST, TPM2_HC.POLICY_SESSION_FIRST):
                _, loaded = self._esapi.get_capability(TPM2_CAP.HANDLES, first, MAX_LOADED_HANDLES)
                for handle in loaded.data.handles:  # only handles of the type asked for
                    self._esapi.flush_context(self._esapi.tr_from_tpmpublic(handle))
        except TSS2_Exception as exc:
            raise _step("flushing what an interrupted command left loaded", exc) from None

    def _persistent_handles(self) -> set[int]:
        """The persistent handles in use, listed once per instance (asking the TPM for an absent handle
        is an error the TSS logs on stderr)."""
        if self._listed is None:
            try:
                _, listed = self._esapi.get_capability(
                    TPM2_CAP.HANDLES, PERSISTENT_HANDLES, MAX_PERSISTENT_HANDLES
                )
            except TSS2_Exception as exc:
                raise _step("listing the persistent handles", exc) from None
            self._listed = set(listed.data.handles)
        return self._listed

    def _persistent(self, handle: int, what: str) -> tuple[ESYS_TR, bytes] | None:
        """(ESYS handle, TPM2B_PUBLIC) of the persistent key at `handle`; None if the TPM has none there."""
        if handle not in self._objects:
            if handle not in self._persistent_handles():
                return None
            try:
                key = self._esapi.tr_from_tpmpublic(handle)
                public, _, _ = self._esapi.read_public(key)
            except TSS2_Exception as exc:
                raise _step(f"reading the {what} at 0x{handle:08x}", exc) from None
            self._objects[handle] = (key, bytes(public.marshal()))
        return self._objects[handle]

    def _ek(self) -> tuple[ESYS_TR, bytes]:
        ek = self._persistent(EK_HANDLE, "EK")
        if ek is None:
            raise NodeTpmError(
                f"TPM: no EK at persistent handle 0x{EK_HANDLE:08x}: the TPM was not provisioned "
                "(swtpm_setup --create-ek-cert makes it)"
            )
        return ek

    def _ak(self) -> ESYS_TR:
        ak = self._persistent(AK_HANDLE, "AK")
        if ak is None:
            raise NodeTpmError(
                f"TPM: no attestation key at 0x{AK_HANDLE:08x} yet: read attestation_key() first"
            )
        return ak[0]

    def ek_public(self) -> bytes:
        """The RSA EK's TPM2B_PUBLIC."""
        return self._ek()[1]

    def attestation_key(self) -> AttestationKey:
        """The AK at AK_HANDLE, made under the EK and persisted there first if the TPM has none."""
        ak = self._persistent(AK_HANDLE, "AK")
        if ak is None:
            try:
                ak = self._create_attestation_key()
            except TSS2_Exception as exc:
                raise _step("making the attestation key", exc) from None
        return AttestationKey(ak[1], bytes(self._esapi.tr_get_name(ak[0])))

    def _endorsement_session(self) -> ESYS_TR:
        """A policy session satisfying the EK's policy (PolicySecret on the endorsement hierarchy), ending
        with the command it authorizes."""
        session = self._esapi.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
        )
        try:
            self._esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
            self._esapi.trsess_set_attributes(session, 0, TPMA_SESSION.CONTINUESESSION)
        except TSS2_Exception:
            self._esapi.flush_context(session)
            raise
        return session

    def _with_endorsement(self, command: Callable[[ESYS_TR], _Result]) -> _Result:
        """Run `command` with an endorsement policy session; the session is flushed if the command fails
        (on success the TPM ends it)."""
        session = self._endorsement_session()
        try:
            return command(session)
        except TSS2_Exception:
            self._esapi.flush_context(session)
            raise

    def _create_attestation_key(self) -> tuple[ESYS_TR, bytes]:
        ek = self._ek()[0]
        public = TPM2B_PUBLIC.parse(self._ak_template, objectAttributes=AK_ATTRIBUTES)
        template = TPM2B_TEMPLATE(public.publicArea.marshal())
        transient, _, created = self._with_endorsement(
            lambda session: self._esapi.create_loaded(ek, None, template, session1=session)
        )
        try:
            persistent = self._esapi.evict_control(ESYS_TR.OWNER, transient, AK_HANDLE)
        finally:
            self._esapi.flush_context(transient)
        self._objects[AK_HANDLE] = (persistent, bytes(created.marshal()))
        return self._objects[AK_HANDLE]

    def quote(self, nonce: bytes, pcrs: tuple[int, ...] = QUOTED_PCRS) -> tuple[bytes, bytes]:
        """TPM2_Quote of `pcrs` (sha256 bank) over `nonce` with the AK: (TPMS_ATTEST, TPMT_SIGNATURE)."""
        ak = self._ak()
        selection = TPML_PCR_SELECTION.parse(f"{BANK}:{','.join(map(str, pcrs))}")
        try:
            attest, signature = self._esapi.quote(
                ak, selection, TPM2B_DATA(nonce), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
            )
        except TSS2_Exception as exc:
            raise _step("TPM2_Quote", exc) from None
        return bytes(attest), bytes(signature.marshal())

    def pcr_values(self, pcrs: tuple[int, ...] = QUOTED_PCRS) -> dict[int, bytes]:
        """The current values of `pcrs` in the sha256 bank (TPM2_PCR_Read answers 8 at most at a time)."""
        values: dict[int, bytes] = {}
        remaining = list(pcrs)
        while remaining:
            selection = TPML_PCR_SELECTION.parse(f"{BANK}:{','.join(map(str, remaining))}")
            try:
                _, selected, digests = self._esapi.pcr_read(selection)
            except TSS2_Exception as exc:
                raise _step("TPM2_PCR_Read", exc) from None
            read = [
                pcr
                for pcr in remaining
                if selected.count and selected[0].pcrSelect[pcr // 8] & (1 << pcr % 8)
            ]
            if not read:
                raise NodeTpmError(f"TPM: TPM2_PCR_Read returned none of the {BANK} PCRs {remaining}")
            values.update(zip(read, (bytes(digest) for digest in digests), strict=True))
            remaining = [pcr for pcr in remaining if pcr not in values]
        return values

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the AK and the EK: the secret MakeCredential sealed to this TPM.

        `credential_blob` and `encrypted_secret` are the contents of TPM2B_ID_OBJECT and
        TPM2B_ENCRYPTED_SECRET (as in trustedlaunch.tpm.credential.CredentialChallenge)."""
        ak, ek = self._ak(), self._ek()[0]
        blob, secret = TPM2B_ID_OBJECT(credential_blob), TPM2B_ENCRYPTED_SECRET(encrypted_secret)
        try:
            recovered = self._with_endorsement(
                lambda session: self._esapi.activate_credential(ak, ek, blob, secret, session2=session)
            )
        except TSS2_Exception as exc:
            raise _step("TPM2_ActivateCredential", exc) from None
        return bytes(recovered)

    def ek_certificate(self) -> bytes:
        """The RSA EK certificate (DER) at NV index 0x01c00002, read in chunks the TPM accepts."""
        try:
            index = self._esapi.tr_from_tpmpublic(EK_CERTIFICATE_INDEX)
            public, _ = self._esapi.nv_read_public(index)
            _, data = self._esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT_NV.BUFFER_MAX, 1)
            chunk = next(p.value for p in data.data.tpmProperties if p.property == TPM2_PT_NV.BUFFER_MAX)
            size = public.nvPublic.dataSize
            certificate = b"".join(
                bytes(self._esapi.nv_read(index, min(chunk, size - offset), offset, ESYS_TR.OWNER))
                for offset in range(0, size, chunk)
            )
        except TSS2_Exception as exc:
            raise _step(
                f"reading the EK certificate from NV index 0x{EK_CERTIFICATE_INDEX:08x}", exc
            ) from None
        return certificate
