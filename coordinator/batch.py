"""What the batch paths of reads and writes share: finishing some keys the single-key way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from pairdb.coordinator.topology import LeaseLapsed
from pairdb.kernel.errors import PairdbError, Unavailable

T = TypeVar("T")


async def one_by_one(
    indexes: Sequence[int], run: Callable[[int], Awaitable[T]], results: list[T | PairdbError | None]
) -> None:
    """Run the single-key path for these items of a batch; each gets its own result or error."""
    again = await asyncio.gather(*(run(i) for i in indexes), return_exceptions=True)
    for i, result in zip(indexes, again, strict=True):
        if isinstance(result, LeaseLapsed):
            results[i] = Unavailable(str(result))
        elif isinstance(result, BaseException) and not isinstance(result, PairdbError):
            raise result
        else:
            results[i] = result
