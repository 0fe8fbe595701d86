"""Attestation challenges: single-use, short-lived nonces that cost no state until they are used.

A nonce is 32 bytes (it fits the TPM2_Quote qualifying data of every TPM)::

    expiry (uint32, Unix seconds, big-endian) || 12 random bytes || HMAC-SHA256(key, the first 16 bytes)[:16]

Issuing one stores nothing. Redeeming it checks the MAC (this server issued it), then the expiry, then
inserts it into the used set, whose primary key refuses a second use; an entry is kept until its nonce
expires (an expired nonce fails the expiry check anyway), so the set holds at most rate x TTL entries.

The HMAC key and the used set live in one SQLite file (WAL mode, mode 0600), so every worker process of the
API on one host shares them and a nonce is single-use across workers. Several API hosts would need the used
set in a store they all share (e.g. a table of the control-plane database) and the same key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from trustedlaunch.errors import TrustedLaunchError

NONCE_SIZE = 32
_EXPIRY = struct.Struct(">I")
_RANDOM_SIZE = 12
_MAC_SIZE = NONCE_SIZE - _EXPIRY.size - _RANDOM_SIZE
DEFAULT_TTL_SECONDS = 120.0  # a node agent in a VM quotes within seconds; a TCG boot may take longer
MAX_TTL_SECONDS = 3600.0
PRUNE_INTERVAL_SECONDS = 10.0
BUSY_TIMEOUT_SECONDS = 10.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS hmac_key (id INTEGER PRIMARY KEY CHECK (id = 1), key BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS used_nonce (nonce BLOB PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS used_nonce_expires ON used_nonce (expires)",
)


class NonceError(TrustedLaunchError):
    """A nonce that cannot be redeemed; `code` names why (an ARM error code)."""

    code = "NonceInvalid"


class NonceInvalidError(NonceError):
    """Not a nonce this server issued (wrong size or MAC)."""

    code = "NonceInvalid"


class NonceExpiredError(NonceError):
    """A nonce past its expiry."""

    code = "NonceExpired"


class NonceReusedError(NonceError):
    """A nonce that was already redeemed (replayed evidence)."""

    code = "NonceAlreadyUsed"


@dataclass(frozen=True)
class Challenge:
    """A fresh nonce and when it stops being accepted."""

    nonce: bytes
    expires_at: datetime


class ChallengeStore:
    """Issues and redeems nonces, with the key and used set in the SQLite file at `path` (created 0600)."""

    def __init__(
        self,
        path: Path,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
            raise NonceError(f"nonce TTL {ttl_seconds} s is outside (0, {MAX_TTL_SECONDS:.0f}] s")
        self.path = path
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # the key must never be world-readable
        # autocommit: each statement is its own transaction; one connection shared under a lock
        self._db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash, not a power cut
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._db.execute("INSERT OR IGNORE INTO hmac_key (id, key) VALUES (1, ?)", (secrets.token_bytes(32),))
        (key,) = self._db.execute("SELECT key FROM hmac_key WHERE id = 1").fetchone()
        self._key: bytes = key
        self._next_prune = 0.0

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def _mac(self, head: bytes) -> bytes:
        return hmac.new(self._key, head, hashlib.sha256).digest()[:_MAC_SIZE]

    def issue(self) -> Challenge:
        """A new nonce valid for the store's TTL."""
        expires = int(self.clock() + self.ttl_seconds) + 1  # whole seconds, never shorter than the TTL
        head = _EXPIRY.pack(expires) + secrets.token_bytes(_RANDOM_SIZE)
        return Challenge(head + self._mac(head), datetime.fromtimestamp(expires, UTC))

    def redeem(self, nonce: bytes) -> None:
        """Accept `nonce` once: raise NonceInvalidError if this store did not issue it, NonceExpiredError
        after its expiry, NonceReusedError if it was redeemed before."""
        if len(nonce) != NONCE_SIZE:
            raise NonceInvalidError(
                f"the nonce is {len(nonce)} bytes, not the {NONCE_SIZE} bytes of a challenge of this server"
            )
        head, mac = nonce[:-_MAC_SIZE], nonce[-_MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(head)):
            raise NonceInvalidError(
                f"nonce {nonce.hex()} was not issued by this server (its MAC does not verify): "
                "ask the challenge endpoint for a nonce"
            )
        (expires,) = _EXPIRY.unpack_from(head)
        now = self.clock()
        if now >= expires:
            when = datetime.fromtimestamp(expires, UTC).isoformat()
            raise NonceExpiredError(
                f"nonce {nonce.hex()} expired at {when} ({now - expires:.0f} s ago; nonces are valid for "
                f"{self.ttl_seconds:.0f} s): get a new challenge and quote again"
            )
        with self._lock:
            if now >= self._next_prune:
                self._db.execute("DELETE FROM used_nonce WHERE expires <= ?", (int(now),))
                self._next_prune = now + PRUNE_INTERVAL_SECONDS
            try:
                self._db.execute("INSERT INTO used_nonce (nonce, expires) VALUES (?, ?)", (nonce, expires))
            except sqlite3.IntegrityError:
                raise NonceReusedError(
                    f"nonce {nonce.hex()} was already used: evidence over a nonce is accepted once "
                    "(replayed evidence?)"
                ) from None

    def used_count(self) -> int:
        """How many redeemed, unexpired-at-last-prune nonces the used set holds."""
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM used_nonce").fetchone()
        return int(count)
