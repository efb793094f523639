"""CPU priority of background work: copies, verifications and repairs yield the CPU to clients.

A migration worker and a storage node's background reader (storage_node/background.py)
run niced. On a machine of their own this changes nothing; on one they share with
storage nodes or coordinators, the clients' requests are scheduled first and the
background work takes what is left, instead of queueing requests behind it.
"""

from __future__ import annotations

import os

# Added niceness: under contention, a process at +10 gets about a tenth of the CPU share of one at 0.
BACKGROUND_NICE = 10


def lower(by: int) -> None:
    """Lower this thread's CPU priority by `by`, before it starts others: on Linux they inherit it."""
    if by:
        os.nice(by)
