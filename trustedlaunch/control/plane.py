"""The server side of one installation, wired in one place: the store (migrated, seeded, with its admin
token), the attestation challenge (nonce) store, the attestation token issuer and the reconciler (which
brings the attestation monitor, alert delivery, retention and the clusters' hosted control planes), plus the
metrics shared by several processes.

Every way of running the control plane starts here: `tl serve` (API and reconciler), the embedded server of
the other `tl` commands, each API worker process (`api/app.py`'s app factory) and the standalone reconciler
(`tl reconciler run`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from trustedlaunch.attest.metrics import record_across_processes
from trustedlaunch.attest.nonces import ChallengeStore
from trustedlaunch.attest.tokens import TokenIssuer
from trustedlaunch.control.attestation_monitor import DEFAULT_ATTESTATION_INTERVAL
from trustedlaunch.control.bootstrap import attestation_token_issuer, default_token_file, open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes, hosted_control_planes_enabled
from trustedlaunch.control.reconciler import Reconciler, default_state_dir
from trustedlaunch.control.verifier import open_challenge_store
from trustedlaunch.errors import TrustedLaunchError


class ControlPlane:
    """The store at `database_url` (default: TL_DATABASE_URL or the user data dir), the attestation token
    issuer (default: the keys beside `token_file`, shared by every process of the installation).

    With `api` (a plane that serves the API), the admin token is written to `token_file` (default: the user
    config dir) and the challenge store beside it is opened; a reconciler on its own needs neither.
    Raises TrustedLaunchError when the store cannot be opened. A context
    manager; `close` releases everything it opened.
    """

    def __init__(
        self,
        database_url: str | None = None,
        token_file: Path | None = None,
        *,
        token_issuer: TokenIssuer | None = None,
        api: bool = True,
    ) -> None:
        self.token_file = token_file or default_token_file()
        self.token_issuer = token_issuer or attestation_token_issuer(self.token_file)
        try:
            self.engine, self.sessions = open_store(database_url, self.token_file if api else None)
        except SQLAlchemyError as exc:
            raise TrustedLaunchError(f"cannot open the store: {exc}") from exc
        try:
            self._challenges = open_challenge_store(self.token_file.parent) if api else None
        except TrustedLaunchError:  # a bad TL_ATTESTATION_NONCE_TTL
            self.engine.dispose()
            raise

    @property
    def challenges(self) -> ChallengeStore:
        """The attestation challenge (nonce) store, a file beside the admin token shared by every API
        process."""
        if self._challenges is None:
            raise TrustedLaunchError("this control plane serves no API: it has no challenge store")
        return self._challenges

    def reconciler(
        self,
        state_dir: Path | None = None,
        *,
        attestation_interval: float = DEFAULT_ATTESTATION_INTERVAL,
        auto_repair: bool = True,
        max_surge: int = 0,
        poll_seconds: float = 1.0,
    ) -> Reconciler:
        """A reconciler over this store, keeping its node images, EK CA and VM run directories in
        `state_dir` (default: the user data dir), signing attestation tokens with this plane's issuer; with
        hosted control planes on (TL_HOSTED_CONTROL_PLANES, default on) each cluster gets its own (under
        `state_dir/clusters`)."""
        state_dir = state_dir or default_state_dir()
        return Reconciler(
            self.sessions,
            state_dir,
            max_surge=max_surge,
            poll_seconds=poll_seconds,
            attestation_interval=attestation_interval,
            auto_repair=auto_repair,
            token_issuer=self.token_issuer,
            cluster_planes=ClusterPlanes(state_dir) if hosted_control_planes_enabled() else None,
        )

    def close(self) -> None:
        """Close the challenge store and the store's connections."""
        if self._challenges is not None:
            self._challenges.close()
        self.engine.dispose()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@contextmanager
def metrics_across_processes() -> Iterator[Path]:
    """Record every metric of this process and of the processes it starts from now on into a temporary
    directory (removed at the end), so a scrape of any API worker adds up all of them."""
    directory = Path(tempfile.mkdtemp(prefix="tl-metrics-"))
    record_across_processes(directory)  # before the reconciler or any worker records anything
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
