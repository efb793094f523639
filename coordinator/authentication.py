"""Who is calling: an API key (`authorization: Bearer pdb_...`) or an admin client certificate.

Keys are looked up in PostgreSQL and kept briefly (KEY_TTL) so a request
costs no query: a key revoked on this coordinator stops working at once
(forget), on the other coordinators within KEY_TTL. Unknown key ids are kept
as briefly, concurrent lookups of one id share one query, and only a few
lookups run at once, so made-up keys cannot flood PostgreSQL.

Past KEY_TTL a cached key still answers (for up to STALE_LIMIT) while one
lookup refreshes it in the background: a coordinator whose PostgreSQL is slow
or gone keeps serving the keys it knows for as long as its lease lets it serve
at all (the lease, shorter than STALE_LIMIT, is what stops it), and a revoked
key is refused as soon as that refresh lands.

A certificate whose subject OU is `admin` (TLS with client certificates;
grpc puts the peer's certificate in the auth context) makes its holder admin.
Without TLS there is no certificate and only keys count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import structlog

from pairdb.coordinator.auth_store import AuthStore, KeyRecord
from pairdb.kernel.errors import Unauthenticated, Unavailable
from pairdb.security import api_keys
from pairdb.security.roles import Principal, Role
from pairdb.security.tls import peer_principal
from pairdb.serving.interception import ServicerContext

log = structlog.get_logger()

KEY_TTL = 2.0
# Longer than any coordinator lease: past it a key is looked up before it answers.
STALE_LIMIT = 60.0
MAX_CACHED_KEYS = 10_000
# PostgreSQL lookups of uncached keys running at once.
CONCURRENT_LOOKUPS = 4
ANONYMOUS_ADMIN = Principal("anonymous", Role.ADMIN)
_NO_CREDENTIALS = f"no credentials: {api_keys.HOW_TO_PASS}"


def _bearer(context: ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class Authenticator:
    def __init__(
        self,
        store: AuthStore,
        *,
        insecure: bool = False,
        ttl: float = KEY_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.insecure = insecure
        self._ttl = ttl
        self._clock = clock
        # key_id -> (expires, record or None for unknown); insertion order is age order.
        self._keys: dict[str, tuple[float, KeyRecord | None]] = {}
        self._lookups: dict[str, asyncio.Task[KeyRecord | None]] = {}
        self._limit = asyncio.Semaphore(CONCURRENT_LOOKUPS)
        self._forgotten = 0

    async def principal(self, context: ServicerContext) -> Principal:
        """The caller; Unauthenticated saying what to pass, or Unavailable when keys cannot be read."""
        if self.insecure:
            return ANONYMOUS_ADMIN
        token = _bearer(context)
        if token is not None:
            return await self._from_key(token)
        holder = self._from_certificate(context)
        if holder is not None:
            return holder
        raise Unauthenticated(_NO_CREDENTIALS)

    def forget(self, key_id: str) -> None:
        """Drop what is cached of key_id (it was revoked here): the next request reads it afresh."""
        self._keys.pop(key_id, None)
        self._lookups.pop(key_id, None)
        self._forgotten += 1

    async def _from_key(self, token: str) -> Principal:
        try:
            presented = api_keys.parse(token)
        except api_keys.MalformedKey as exc:
            raise Unauthenticated(f"malformed API key ({exc}): {api_keys.HOW_TO_PASS}") from None
        record = await self._record(presented.key_id)
        if record is None or not api_keys.verify(presented, record.secret_sha256):
            raise Unauthenticated(f"unknown API key {presented.key_id}: {api_keys.HOW_TO_PASS}")
        if not record.active:
            raise Unauthenticated(
                f"API key {presented.key_id} was revoked: `pairdb key create` makes a new one"
            )
        return Principal(record.key_id, record.role, record.tenant_id)

    async def _record(self, key_id: str) -> KeyRecord | None:
        cached = self._keys.get(key_id)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        lookup = self._lookups.get(key_id)
        if lookup is None:
            lookup = self._lookups[key_id] = asyncio.create_task(self._lookup(key_id, self._forgotten))
            lookup.add_done_callback(_observed)
        if cached is not None and now - cached[0] < STALE_LIMIT:
            return cached[1]  # refreshed in the background
        try:
            # Shielded: one caller giving up does not cancel the others' lookup.
            return await asyncio.shield(lookup)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("API key lookup failed", key_id=key_id, error=f"{type(exc).__name__}: {exc}")
            raise Unavailable("cannot check the API key now (PostgreSQL unreachable); retry") from None

    async def _lookup(self, key_id: str, forgotten: int) -> KeyRecord | None:
        try:
            async with self._limit:
                record = await self._store.key(key_id)
        finally:
            if self._lookups.get(key_id) is asyncio.current_task():
                del self._lookups[key_id]
        if forgotten == self._forgotten:  # not revoked here meanwhile: safe to keep
            self._keep(key_id, record)
        return record

    def _keep(self, key_id: str, record: KeyRecord | None) -> None:
        self._keys.pop(key_id, None)
        if len(self._keys) >= MAX_CACHED_KEYS:
            now = self._clock()
            for stale in [k for k, (expires, _) in self._keys.items() if expires <= now]:
                del self._keys[stale]
            while len(self._keys) >= MAX_CACHED_KEYS:
                del self._keys[next(iter(self._keys))]
        self._keys[key_id] = (self._clock() + self._ttl, record)

    def _from_certificate(self, context: ServicerContext) -> Principal | None:
        """Admin for a client certificate of the cluster CA with role admin (mutual TLS); else None."""
        holder = peer_principal(context)
        if holder is None or holder.role is not Role.ADMIN:
            return None
        return Principal(f"cert:{holder.name}", Role.ADMIN)


def _observed(lookup: asyncio.Task[KeyRecord | None]) -> None:
    """A background refresh that failed is logged, not left as an unretrieved exception."""
    if not lookup.cancelled() and lookup.exception() is not None:
        log.warning("API key refresh failed; serving the cached key", error=repr(lookup.exception()))
