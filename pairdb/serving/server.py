"""What every pairdb gRPC server carries besides its own service: health, reflection, metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pairdb.serving import request_guard
from pairdb.serving.interception import Wrapper, WrappingInterceptor
from pairdb.serving.metrics import Timed
from pairdb.serving.request_guard import RequestGuard
from pairdb.serving.request_ids import RequestIds

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def new_server(
    options: list[tuple[str, int]] | None = None, wrappers: Sequence[Wrapper] = ()
) -> grpc.aio.Server:
    """A grpc.aio server that counts and times every RPC and refuses malformed requests cleanly.

    wrappers run inside those (outermost first), so refusals they make are counted and timed too.
    """
    # The guard goes outermost: it drops an aborted call's traceback (and with it the
    # request every inner frame holds) after the metrics wrapper has seen the status.
    wrapping = WrappingInterceptor(
        [RequestGuard(), RequestIds(), Timed(), *wrappers], request_guard.deserializer
    )
    return grpc.aio.server(interceptors=[wrapping], options=options)


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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._servicer.enter_graceful_shutdown()

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._publish()

    async def _publish(self) -> None:
        status = SERVING if self._ready() else NOT_SERVING
        for name in self._services:
            await self._servicer.set(name, status)
