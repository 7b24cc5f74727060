"""Synchronous TPM commands on one ESAPI context; only the TPM thread calls these.

Every transient object and session made here is flushed before the method
returns, on success and on failure: without a resource manager (swtpm, or
/dev/tpm0) leaked handles stay loaded until the TPM restarts, and after three
objects it refuses to load more (keylime#656). Quoting itself loads nothing:
the AK is persistent and authorised by an empty password.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_HT,
    TPM2_PT,
    TPM2_PT_NV,
    TPM2_SE,
    TPM2_SU,
    TPMA_PERMANENT,
    TPMA_SESSION,
)
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMT_HA,
    TPMT_SYM_DEF,
    TPMU_HA,
)
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

from licensing_server.tpm._errors import (
    TPM_UNAVAILABLE,
    TpmCommandFailed,
    TpmUnavailable,
    is_out_of_memory,
    is_tpm_refusal,
)
from licensing_server.tpm._keys import (
    EK_CANDIDATES,
    ak_lacks_noda,
    ak_problem,
    ak_template,
    check_ak_handle,
    ecc_public_pem,
    pcr_digest,
    pcr_selection,
)
from licensing_server.tpm._results import AttestationKeyInfo, LockoutState, QuoteResult

__all__ = ["TpmConnection"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

_DEFAULT_NV_CHUNK = 512  # every TPM 2.0 reads at least this much NV per command
_QUOTE_ATTEMPTS = 3  # another TPM user may extend between quote and read: retry


class TpmConnection:
    """One ESAPI context plus what it has looked up (AK handles), for one thread."""

    def __init__(self, tcti: str) -> None:
        self._esapi = ESAPI(tcti)
        self._aks: dict[int, Any] = {}  # persistent handle -> ESYS_TR
        self._held: list[Any] = []  # transients an enclosing block still uses

    def close(self) -> None:
        """Finalize ESAPI (frees its ESYS_TRs; persistent objects stay in the TPM)."""
        self._aks.clear()
        self._esapi.close()

    # -- EK -------------------------------------------------------------------

    def ek_certificate_der(self) -> bytes:
        """The certificate of the first EK type whose NV index is defined."""
        cert, _ = self._ek_template()
        return cert

    def ek_public(self) -> bytes:
        """The EK's TPM2B_PUBLIC, recreated from its template (same seed, same key)."""
        with self._ek() as (_, public):
            return bytes(public.marshal())

    def _ek_template(self) -> tuple[bytes, TPM2B_PUBLIC]:
        defined = set(self._handles(TPM2_HT.NV_INDEX))

        def read(index: int) -> bytes:
            if index not in defined:
                raise NoSuchIndex(index)
            return self._nv_read(index)

        for candidate in EK_CANDIDATES:
            if candidate.cert_index in defined:
                cert, template = create_ek_template(candidate.ektype, read)
                return bytes(cert), template
        indices = ", ".join(f"0x{c.cert_index:08x}" for c in EK_CANDIDATES)
        raise TpmCommandFailed(
            "TPM_EK_CERTIFICATE_MISSING", f"the TPM holds no EK certificate at {indices}"
        )

    @contextmanager
    def _ek(self) -> Iterator[tuple[Any, TPM2B_PUBLIC]]:
        """The EK loaded as a transient primary; flushed when the block ends."""
        _, template = self._ek_template()
        handle, public, _, _, _ = self._retrying_on_full_memory(
            lambda: self._esapi.create_primary(
                TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
            )
        )
        self._held.append(handle)
        try:
            yield handle, public
        finally:
            self._held.remove(handle)
            self._flush_quietly(handle)

    def _nv_read(self, index: int) -> bytes:
        nv = self._esapi.tr_from_tpmpublic(index)
        try:
            nv_public, _ = self._esapi.nv_read_public(nv)
            size = int(nv_public.nvPublic.dataSize)
            chunk = self._nv_chunk()
            data = b""
            while len(data) < size:
                part = self._esapi.nv_read(nv, min(chunk, size - len(data)), len(data))
                data += bytes(part)
            return data
        finally:
            self._esapi.tr_close(nv)

    def _nv_chunk(self) -> int:
        _, capability = self._esapi.get_capability(
            TPM2_CAP.TPM_PROPERTIES, TPM2_PT_NV.BUFFER_MAX, 1
        )
        properties = capability.data.tpmProperties
        for i in range(len(properties)):
            if properties[i].property == TPM2_PT_NV.BUFFER_MAX:
                return int(properties[i].value)
        return _DEFAULT_NV_CHUNK

    # -- AK -------------------------------------------------------------------

    def attestation_key(self, persistent_handle: int) -> AttestationKeyInfo:
        """The AK at ``persistent_handle``, created and persisted on first use."""
        ak = self._ak(persistent_handle)
        public, name, _ = self._esapi.read_public(ak)
        return AttestationKeyInfo(
            public=bytes(public.marshal()), name=bytes(name), public_pem=ecc_public_pem(public)
        )

    def _ak(self, persistent_handle: int) -> Any:
        """The AK's ESYS_TR, looked up once per connection.

        The AK is an endorsement-hierarchy primary: quotes it signs carry the real
        resetCount/restartCount (the TPM obfuscates them for keys in the owner
        hierarchy), and being derived from the endorsement seed it comes back
        identical if the persistent copy is ever lost.
        """
        cached = self._aks.get(persistent_handle)
        if cached is not None:
            return cached
        check_ak_handle(persistent_handle)
        if persistent_handle in self._handles(TPM2_HT.PERSISTENT):
            ak = self._esapi.tr_from_tpmpublic(persistent_handle)
            public, _, _ = self._esapi.read_public(ak)
            problem = ak_problem(public)
            if problem is not None:
                self._esapi.tr_close(ak)
                raise TpmCommandFailed(
                    "TPM_AK_HANDLE_CONFLICT",
                    f"the object at 0x{persistent_handle:08x} is not an attestation key: {problem}",
                )
            if ak_lacks_noda(public):
                # Made before AKs were noDA: replace it (EvictControl needs owner
                # authorization, which DA lockout does not block). The new key gets a
                # new certificate when the attestor proves it.
                self._esapi.evict_control(ESYS_TR.OWNER, ak, persistent_handle)
                _log.warning(
                    "replacing the attestation key at 0x%08x: it lacked noDA", persistent_handle
                )
                ak = self._create_ak(persistent_handle)
        else:
            ak = self._create_ak(persistent_handle)
        self._aks[persistent_handle] = ak
        return ak

    def _create_ak(self, persistent_handle: int) -> Any:
        transient, _, _, _, _ = self._retrying_on_full_memory(
            lambda: self._esapi.create_primary(
                TPM2B_SENSITIVE_CREATE(), ak_template(), ESYS_TR.ENDORSEMENT
            )
        )
        try:
            persistent = self._esapi.evict_control(ESYS_TR.OWNER, transient, persistent_handle)
        finally:
            self._flush_quietly(transient)
        _log.info("created the attestation key at 0x%08x", persistent_handle)
        return persistent

    def activate_credential(
        self, credential_blob: bytes, encrypted_secret: bytes, ak_handle: int
    ) -> bytes:
        """TPM2_ActivateCredential(AK, EK): the secret, if it was made for this AK and EK."""
        blob = _unmarshal_exactly(TPM2B_ID_OBJECT, credential_blob, "credential_blob")
        secret = _unmarshal_exactly(TPM2B_ENCRYPTED_SECRET, encrypted_secret, "encrypted_secret")
        ak = self._ak(ak_handle)
        with self._ek() as (ek, _):
            session = self._retrying_on_full_memory(
                lambda: self._esapi.start_auth_session(
                    ESYS_TR.NONE,
                    ESYS_TR.NONE,
                    TPM2_SE.POLICY,
                    TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                    TPM2_ALG.SHA256,
                )
            )
            try:
                # Keep the session alive through the command so that the finally
                # below is always what ends it, whether the command succeeds or not.
                self._esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION)
                self._esapi.policy_secret(ESYS_TR.ENDORSEMENT, session, expiration=0)
                try:
                    cert_info = self._esapi.activate_credential(
                        ak, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=session
                    )
                except TSS2_Exception as exc:
                    if not is_tpm_refusal(exc):
                        raise
                    raise TpmCommandFailed(
                        "TPM_CREDENTIAL_REJECTED",
                        "the TPM rejected the credential: not made for this EK and AK",
                        int(exc.rc),
                    ) from exc
                return bytes(cert_info)
            finally:
                self._flush_quietly(session)

    # -- PCRs and quotes ------------------------------------------------------

    def extend_pcr(self, pcr: int, sha256_digest: bytes) -> None:
        digests = TPML_DIGEST_VALUES(
            [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=sha256_digest))]
        )
        self._esapi.pcr_extend(ESYS_TR(pcr), digests)

    def reset_pcr(self, pcr: int) -> None:
        self._esapi.pcr_reset(ESYS_TR(pcr))

    def read_pcrs(self, pcrs: Sequence[int]) -> dict[int, bytes]:
        """sha256-bank values; TPM2_PCR_Read returns at most 8 digests, so loop."""
        remaining = sorted(set(pcrs))
        values: dict[int, bytes] = {}
        while remaining:
            _, selected, digests = self._esapi.pcr_read(pcr_selection(remaining))
            got = _selected_sha256(selected)
            if not got or len(got) != int(digests.count):
                raise TpmCommandFailed(
                    "TPM_PCR_BANK_MISSING", "the TPM's sha256 PCR bank does not hold these PCRs"
                )
            values.update(zip(got, _digest_list(digests), strict=True))
            remaining = [p for p in remaining if p not in values]
        return values

    def quote(self, qualifying_data: bytes, pcrs: Sequence[int], ak_handle: int) -> QuoteResult:
        """A quote and the PCR values it covers, proven consistent by the quote's pcrDigest."""
        ak = self._ak(ak_handle)
        selection = pcr_selection(pcrs)
        for _ in range(_QUOTE_ATTEMPTS):
            quoted, signature = self._esapi.quote(ak, selection, qualifying_data)
            values = self.read_pcrs(pcrs)
            attest_bytes = bytes(quoted.marshal())[2:]
            attest, _ = TPMS_ATTEST.unmarshal(attest_bytes)
            if bytes(attest.attested.quote.pcrDigest) == pcr_digest(values):
                clock = attest.clockInfo
                return QuoteResult(
                    attest=attest_bytes,
                    signature=bytes(signature.marshal()),
                    pcr_values=values,
                    reset_count=int(clock.resetCount),
                    restart_count=int(clock.restartCount),
                )
        raise TpmUnavailable(TPM_UNAVAILABLE, "the quoted PCRs kept changing while being read")

    def clock_info(self) -> tuple[int, int]:
        time_info = self._esapi.read_clock()
        clock = time_info.clockInfo
        return int(clock.resetCount), int(clock.restartCount)

    # -- dictionary-attack state and power -----------------------------------

    def lockout_state(self) -> LockoutState:
        """TPMA_PERMANENT.inLockout and the DA properties (no authorization needed)."""
        wanted = (
            TPM2_PT.PERMANENT,
            TPM2_PT.LOCKOUT_COUNTER,
            TPM2_PT.MAX_AUTH_FAIL,
            TPM2_PT.LOCKOUT_INTERVAL,
            TPM2_PT.LOCKOUT_RECOVERY,
        )
        _, capability = self._esapi.get_capability(
            TPM2_CAP.TPM_PROPERTIES,
            TPM2_PT.PERMANENT,
            int(TPM2_PT.LOCKOUT_RECOVERY) - int(TPM2_PT.PERMANENT) + 1,
        )
        properties = capability.data.tpmProperties
        found = {
            int(properties[i].property): int(properties[i].value) for i in range(len(properties))
        }
        values = [found.get(int(p), 0) for p in wanted]
        return LockoutState(
            in_lockout=bool(values[0] & int(TPMA_PERMANENT.INLOCKOUT)),
            counter=values[1],
            max_tries=values[2],
            interval_seconds=values[3],
            recovery_seconds=values[4],
        )

    def clear_lockout(self) -> None:
        """TPM2_DictionaryAttackLockReset with the lockout hierarchy's (empty) authorization."""
        self._esapi.dictionary_attack_lock_reset(ESYS_TR.LOCKOUT)

    def shutdown(self) -> None:
        """TPM2_Shutdown(CLEAR): the next TPM2_Startup finds an orderly state.

        Commands sent afterwards still run (the TPM marks its state disorderly
        again when one changes it), so a TPM that outlives us loses nothing.
        """
        self._esapi.shutdown(TPM2_SU.CLEAR)

    # -- housekeeping ---------------------------------------------------------

    def loaded_handle_count(self) -> int:
        """Transient objects and sessions loaded (all of them on swtpm; ours on tpmrm0)."""
        return len(self._handles(TPM2_HT.TRANSIENT)) + len(self._handles(TPM2_HT.LOADED_SESSION))

    def _handles(self, handle_type: int) -> list[int]:
        kind = int(handle_type)
        first = kind << 24
        found: list[int] = []
        while True:
            more, capability = self._esapi.get_capability(TPM2_CAP.HANDLES, first, 254)
            # Keep ``capability`` referenced: ``handles`` is a view into its C memory.
            handles = capability.data.handles
            batch = [int(handles[i]) for i in range(len(handles))]
            found.extend(batch)
            # Loaded sessions are listed with two handle types (HMAC 0x02, policy
            # 0x03); paging past the requested type would list another kind.
            if not more or not batch or batch[-1] >> 24 != kind:
                return found
            first = batch[-1] + 1

    def _retrying_on_full_memory(self, command: Callable[[], _T]) -> _T:
        """Run ``command``; if the TPM's slots are full, flush strays once and retry.

        Strays are handles a crashed process left in a TPM without a resource
        manager (swtpm keeps them until it restarts). Handles this connection
        still uses are kept. Another live user of the same TPM could lose a handle
        here, but only when the TPM is already full, where one of us must fail.
        """
        try:
            return command()
        except TSS2_Exception as exc:
            if not is_out_of_memory(exc):
                raise
        reclaimed = self._reclaim_strays()
        _log.warning("TPM memory was full: flushed %d stray handles", reclaimed)
        return command()

    def _reclaim_strays(self) -> int:
        held = {int(self._esapi.tr_get_tpm_handle(h)) for h in self._held}
        count = 0
        for tpm_handle in self._handles(TPM2_HT.TRANSIENT) + self._handles(TPM2_HT.LOADED_SESSION):
            if tpm_handle in held:
                continue
            stray = self._esapi.tr_from_tpmpublic(tpm_handle)
            self._esapi.flush_context(stray)
            count += 1
        return count

    def _flush_quietly(self, handle: Any) -> None:
        """Flush, logging instead of raising: the original error matters more.

        If the connection is gone the flush fails too; the worker then drops the
        connection, and a TPM restart (or the resource manager) frees the slot.
        """
        try:
            self._esapi.flush_context(handle)
        except TSS2_Exception:
            _log.warning("could not flush a TPM handle", exc_info=True)


def _selected_sha256(selection: TPML_PCR_SELECTION) -> list[int]:
    """The PCR indices a TPML_PCR_SELECTION selects in the sha256 bank, ascending.

    Parsed from the marshalled form (count, then hash || sizeofSelect || bitmap
    per bank): walking tpm2-pytss's nested objects costs more than the command.
    """
    data = bytes(selection.marshal())
    chosen: list[int] = []
    offset = 4
    for _ in range(int.from_bytes(data[:4], "big")):
        bank = int.from_bytes(data[offset : offset + 2], "big")
        size = data[offset + 2]
        bitmap = data[offset + 3 : offset + 3 + size]
        offset += 3 + size
        if bank == TPM2_ALG.SHA256:
            chosen.extend(
                index * 8 + bit
                for index, byte in enumerate(bitmap)
                for bit in range(8)
                if byte >> bit & 1
            )
    return sorted(chosen)


def _digest_list(digests: TPML_DIGEST) -> list[bytes]:
    """The digests of a TPML_DIGEST (count, then size || bytes each), parsed directly."""
    data = bytes(digests.marshal())
    values: list[bytes] = []
    offset = 4
    for _ in range(int.from_bytes(data[:4], "big")):
        size = int.from_bytes(data[offset : offset + 2], "big")
        values.append(data[offset + 2 : offset + 2 + size])
        offset += 2 + size
    return values


def _unmarshal_exactly(kind: Any, data: bytes, what: str) -> Any:
    """A TPM2B from its marshalled bytes, refusing trailing or missing bytes."""
    try:
        value, used = kind.unmarshal(data)
    except Exception as exc:
        raise ValueError(f"{what} is not a marshalled {kind.__name__}") from exc
    if used != len(data):
        raise ValueError(f"{what} has {len(data) - used} trailing bytes")
    return value
