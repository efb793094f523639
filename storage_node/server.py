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


class RefuseMalformed(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """INVALID_ARGUMENT for a request that does not parse (bad wire format, invalid UTF-8).

    grpc.aio answers a request its deserializer raises on with UNKNOWN
    ("Unexpected DecodeError"), which reads as a server bug and hides the
    caller's. Used by the coordinator's server too.
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
            self._handlers[method] = _parse_in_handler(handler)
        return self._handlers[method]


def _parse_in_handler(handler: Handler) -> Handler:
    """The same RPC, deserializing inside the behaviour, where a parse error can abort with a status."""
    parse = handler.request_deserializer
    if parse is None or handler.request_streaming:
        return handler

    async def parsed(raw: bytes, context: Context) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}")

    # Typed by grpc-stubs as sync callables; ours are coroutines and async generators.
    unary: Any = handler.unary_unary
    if unary is not None:

        async def unary_unary(raw: bytes, context: Context) -> Any:
            return await unary(await parsed(raw, context), context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, response_serializer=handler.response_serializer
        )
    stream: Any = handler.unary_stream

    async def unary_stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
        async for reply in stream(await parsed(raw, context), context):
            yield reply

    return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=handler.response_serializer)


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
        interceptors=[RefuseMalformed()],
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
