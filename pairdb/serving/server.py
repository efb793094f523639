"""What every pairdb gRPC server carries besides its own service: health, reflection, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pairdb.serving import request_guard
from pairdb.serving.interception import Wrapper, WrappingInterceptor
from pairdb.serving.loops import stop_task
from pairdb.serving.metrics import Timed
from pairdb.serving.request_guard import RequestGuard
from pairdb.serving.request_ids import RequestIds

# RPCs a server runs at once (health checks included); the next ones are refused at once with
# RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded!") rather than queued without bound. A
# coordinator serves clients: a few dozen requests in flight saturate its event loop, so beyond
# a thousand more only add memory (a batch may be 32 MiB) and latency. A storage node serves
# coordinators' coalesced calls (a few per coordinator process and kind), copies, digests and
# hint replays: a refusal there costs a replica a write (a hint), so its bound is wider.
COORDINATOR_MAX_CONCURRENT_RPCS = 1000
STORAGE_NODE_MAX_CONCURRENT_RPCS = 2000

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def new_server(
    options: list[tuple[str, int]] | None = None,
    wrappers: Sequence[Wrapper] = (),
    maximum_concurrent_rpcs: int | None = None,
) -> grpc.aio.Server:
    """A grpc.aio server that counts and times every RPC and refuses malformed requests cleanly.

    wrappers: the server's own checks of who may call what, run inside the metrics wrapper
    (a refusal is counted with its status) and before the handler.
    maximum_concurrent_rpcs: RPCs beyond this many at once get RESOURCE_EXHAUSTED (None or 0: no bound).
    """
    # The guard goes outermost: it drops an aborted call's traceback (and with it the
    # request every inner frame holds) after the metrics wrapper has seen the status.
    wrapping = WrappingInterceptor(
        [RequestGuard(), RequestIds(), Timed(), *wrappers], request_guard.deserializer
    )
    return grpc.aio.server(
        interceptors=[wrapping], options=options, maximum_concurrent_rpcs=maximum_concurrent_rpcs or None
    )


class Health:
    """grpc.health.v1.Health for a server's services, plus reflection listing them.

    `ready` is polled: while it returns False the services (and "") report
    NOT_SERVING, so load balancers and orchestrators stop sending traffic.
    """

    def __init__(self, server: grpc.aio.Server, services: list[str], ready: Callable[[], bool]) -> None:
        self._servicer = health_aio.HealthServicer()
        self._services = ["", *services]
        self._ready = ready
        self._task: asyncio.Task[None] | None = None
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)
        reflection.enable_server_reflection(
            [*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )

    async def start(self, interval: float = 0.5) -> None:
        await self._publish()
        self._task = asyncio.create_task(self._run(interval), name="health")

    async def stop(self) -> None:
        await stop_task(self._task)
        await self._servicer.enter_graceful_shutdown()

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._publish()

    async def _publish(self) -> None:
        status = SERVING if self._ready() else NOT_SERVING
        for name in self._services:
            await self._servicer.set(name, status)
