"""Deliberately broken behaviour, so tests can prove the chaos checker catches each bug it guards against.

PAIRDB_SABOTAGE names what to break, comma-separated; it is read once when a
storage node, coordinator or worker starts, which then logs a loud warning. Never set
it outside tests.

- skip_fence: storage nodes accept requests routed by any epoch;
- skip_reversion: coordinators count a replica holding a newer version as an acknowledgement;
- repair_read_set_only: reads make what they return durable in the read set alone;
- purge_without_every_replica: a repair purges old tombstones on the replicas it reached even
  when another replica of the range did not answer (the classic resurrection of a delete).
"""

from __future__ import annotations

import os

SABOTAGE_ENV = "PAIRDB_SABOTAGE"
SKIP_FENCE = "skip_fence"
SKIP_REVERSION = "skip_reversion"
REPAIR_READ_SET_ONLY = "repair_read_set_only"
PURGE_WITHOUT_EVERY_REPLICA = "purge_without_every_replica"
KNOWN = frozenset({SKIP_FENCE, SKIP_REVERSION, REPAIR_READ_SET_ONLY, PURGE_WITHOUT_EVERY_REPLICA})


def from_env() -> frozenset[str]:
    names = frozenset(n.strip() for n in os.environ.get(SABOTAGE_ENV, "").split(",") if n.strip())
    unknown = names - KNOWN
    if unknown:
        raise SystemExit(
            f"{SABOTAGE_ENV}: unknown {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN))}"
        )
    return names
