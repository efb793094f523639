"""The storage-node process: `pairdb storage-node --node-id ID --port P --data-dir D`."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from proto import storage_pb2_grpc
from storage_node.committer import GroupCommitter
from storage_node.engine import Engine
from storage_node.service import StorageService

log = structlog.get_logger()

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
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
