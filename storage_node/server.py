"""The storage-node process: `pairdb storage-node --node-id ID --port P --data-dir D`."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import structlog
from google.protobuf.message import DecodeError

from proto import storage_pb2_grpc
from storage_node.committer import GroupCommitter
from storage_node.engine import Engine
from storage_node.service import StorageService

log = structlog.get_logger()

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in grpc-stubs
Context = grpc.aio.ServicerContext[Any, Any]


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every handler of a server (the coordinator's too) so that

    - a request that does not parse (bad wire format, invalid UTF-8) gets INVALID_ARGUMENT:
      grpc.aio answers it with UNKNOWN ("Unexpected DecodeError"), a server bug to the caller;
    - an aborted call frees its request at once: grpc keeps the abort exception on the call, in
      a reference cycle, and the exception's traceback keeps every handler frame and its request
      (up to 64 MB) alive until a full garbage collection, so bad large requests piled up.
    """

    def __init__(self) -> None:
        # Wrapped once per method; only methods that exist, so unknown names cannot grow it.
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        if method not in self._handlers:
            handler = await continuation(handler_call_details)
            if handler is None:  # no such method: grpc answers UNIMPLEMENTED
                return handler
            self._handlers[method] = _guarded(handler)
        return self._handlers[method]


@dataclass(frozen=True, slots=True)
class _Malformed:
    reason: str


def _guarded(handler: Handler) -> Handler:
    parse = handler.request_deserializer
    if parse is None or handler.request_streaming:
        return handler

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            return _Malformed(str(exc))

    # Typed by grpc-stubs as sync callables; ours are coroutines and async generators.
    unary: Any = handler.unary_unary
    if unary is not None:

        async def unary_unary(request: Any, context: Context) -> Any:
            try:
                await _refuse_malformed(request, context)
                return await unary(request, context)
            except grpc.aio.AbortError as exc:
                del request
                raise _detached(exc) from None

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, handler.response_serializer)
    stream: Any = handler.unary_stream

    async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            await _refuse_malformed(request, context)
            async for reply in stream(request, context):
                yield reply
        except grpc.aio.AbortError as exc:
            del request
            raise _detached(exc) from None

    return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, handler.response_serializer)


async def _refuse_malformed(request: object, context: Context) -> None:
    if isinstance(request, _Malformed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.reason}")


def _detached(exc: grpc.aio.AbortError) -> grpc.aio.AbortError:
    """exc without the frames it holds; grpc needs the same exception object back."""
    exc.__context__ = None
    return exc.with_traceback(None)


@dataclass(frozen=True)
class StorageNodeConfig:
    node_id: str
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 7001


async def serve(config: StorageNodeConfig) -> None:
    engine = Engine(config.data_dir)
    committer = GroupCommitter(engine)
    committer.start()
    server = grpc.aio.server(
        interceptors=[RequestGuard()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    storage_pb2_grpc.add_StorageServiceServicer_to_server(
        StorageService(config.node_id, engine, committer), server
    )
    address = f"{config.host}:{config.port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"storage node {config.node_id}: cannot listen on {address}")
    await server.start()
    stats = engine.stats()
    log.info(
        "Storage node started",
        node_id=config.node_id,
        address=address,
        data_dir=str(config.data_dir),
        keys=stats.keys,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("Storage node stopping", node_id=config.node_id)
    await server.stop(grace=5)
    await committer.stop()
    engine.close()
    log.info("Storage node stopped", node_id=config.node_id)
