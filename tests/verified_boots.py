"""VerifiedBoots of recorded event logs, for tests of the policy rules alone (`attest.evaluation`).

In the product only the verifier's first step (`attest.machine_state.verify_boot`) makes a VerifiedBoot,
from evidence with an authentic quote. The rules are tested on recorded logs that come without a quote
(GCE, RHEL, keylime logs) and on edited summaries, so these tests vouch for the boot themselves, through
the module's seal; tests/attest/test_verifier.py covers the real path from a swtpm quote.
"""

from __future__ import annotations

from collections.abc import Mapping

from trustedlaunch.attest import machine_state
from trustedlaunch.attest.machine_state import VerifiedBoot
from trustedlaunch.eventlog.model import BootSummary, EventLog

NO_LOG = EventLog(format="crypto-agile", banks=(), events=())  # for rules that name no golden-PCR event


def vouched(
    summary: BootSummary,
    *,
    log: EventLog = NO_LOG,
    pcr_values: Mapping[str, Mapping[int, bytes]] | None = None,
) -> VerifiedBoot:
    """The boot of `summary` as if a quote vouched for `log` and `pcr_values` (bank -> PCR -> value)."""
    return VerifiedBoot(
        machine_state._SEAL,
        log=log,
        summary=summary,
        pcr_values=pcr_values or {},
        replayed_pcrs={},
        clock=None,
    )
