"""Tenant ids a coordinator looked up in PostgreSQL and did not find, remembered briefly.

Without it every request for a made-up tenant id costs a PostgreSQL query, and a
flood of them starves the metadata pool. An entry lives `ttl` seconds at most,
and all of them are dropped whenever the coordinator applies a new registry
epoch (a tenant was created: the registry NOTIFYs every coordinator), so a new
tenant is never refused for long. Bounded: the oldest entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from pairdb.kernel.clocks import boottime

DEFAULT_TTL_SECONDS = 1.5
DEFAULT_MAX_ENTRIES = 10_000


class UnknownTenants:
    def __init__(
        self,
        ttl: float = DEFAULT_TTL_SECONDS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = boottime,
    ) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        # tenant id -> when the entry expires; one ttl for all, so insertion order is expiry order.
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, tenant_id: object) -> bool:
        """Whether tenant_id was found missing less than ttl ago."""
        self._expire()
        return tenant_id in self._expiry

    def add(self, tenant_id: str) -> None:
        self._expiry.pop(tenant_id, None)
        self._expiry[tenant_id] = self._clock() + self._ttl
        while len(self._expiry) > self._max_entries:
            self._expiry.popitem(last=False)

    def discard(self, tenant_id: str) -> None:
        self._expiry.pop(tenant_id, None)

    def clear(self) -> None:
        self._expiry.clear()

    def _expire(self) -> None:
        now = self._clock()
        while self._expiry:
            oldest, expires = next(iter(self._expiry.items()))
            if expires > now:
                return
            del self._expiry[oldest]
