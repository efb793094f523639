"""The storage-node process: `pairdb storage-node --node-id ID --port P --data-dir D`."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from pairdb.kernel.clocks import DEFAULT_MAX_OFFSET_MS, WallClock
from pairdb.kernel.sabotage import from_env as sabotage_from_env
from pairdb.proto import storage_pb2_grpc
from pairdb.security.exposure import check_listen
from pairdb.security.tls import ChannelTls, ServerTls, TlsFiles
from pairdb.serving import metrics
from pairdb.serving.server import STORAGE_NODE_MAX_CONCURRENT_RPCS, Health, new_server
from pairdb.storage_node import access
from pairdb.storage_node.access import ClusterOnly
from pairdb.storage_node.background import ReaderProcess
from pairdb.storage_node.client import StoragePool
from pairdb.storage_node.committer import GroupCommitter
from pairdb.storage_node.engine import Engine
from pairdb.storage_node.load import LoadMeter
from pairdb.storage_node.service import StorageService

log = structlog.get_logger()

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
STORAGE_SERVICE = access.SERVICE


@dataclass(frozen=True)
class StorageNodeConfig:
    node_id: str
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 7001
    # /metrics for Prometheus; 0 turns it off.
    metrics_port: int = 0
    # Versions further ahead of this node's clock are refused (see pairdb/kernel/clocks.py).
    max_clock_offset_ms: int = DEFAULT_MAX_OFFSET_MS
    # The cluster CA and this node's certificate (role storage-node, issued for node_id): mutual TLS,
    # only the cluster's coordinators, workers and (to pull a copy's ranges) storage nodes get in.
    # The node dials its peers with the same certificate. Without: plaintext, loopback only.
    tls: TlsFiles | None = None
    # Listen beyond loopback without TLS anyway.
    insecure: bool = False
    # RPCs served at once; more get RESOURCE_EXHAUSTED (0: no bound).
    max_concurrent_rpcs: int = STORAGE_NODE_MAX_CONCURRENT_RPCS


def _oldest_repair_age(engine: Engine) -> float:
    repairs = engine.repairs()
    if not repairs:
        return 0.0
    return max(0.0, time.time() - min(r.repaired_at >> 16 for r in repairs) / 1000)


async def serve(config: StorageNodeConfig) -> None:
    warning = check_listen(
        f"storage node {config.node_id}",
        config.host,
        tls=config.tls is not None,
        insecure=config.insecure,
        fix="Give it --tls-ca, --tls-cert and --tls-key (pairdb cert create-node)",
    )
    sabotage = sabotage_from_env()
    if sabotage:
        log.warning("SABOTAGED: this storage node is broken on purpose, for tests", sabotage=sorted(sabotage))
    engine = Engine(config.data_dir)
    committer = GroupCommitter(engine)
    committer.start()
    load = LoadMeter()
    load.start()
    server = new_server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
        wrappers=[ClusterOnly()] if config.tls else [],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    background = ReaderProcess(config.data_dir)
    await background.start()
    service = StorageService(
        config.node_id,
        engine,
        committer,
        max_clock_offset_ms=config.max_clock_offset_ms,
        clock=WallClock.from_env(),
        sabotage=sabotage,
        load=load,
        background=background,
        # A copy's target pulls from its source with this node's own certificate (role storage-node).
        peers=StoragePool(tls=ChannelTls(config.tls) if config.tls else None),
    )
    storage_pb2_grpc.add_StorageServiceServicer_to_server(service, server)
    health = Health(server, [STORAGE_SERVICE], ready=lambda: True)
    # Read from the engine's counters on each scrape (a short LMDB read transaction).
    metrics.STORAGE_KEYS.set_function(lambda: engine.stats().keys)
    metrics.STORAGE_BYTES.set_function(lambda: engine.stats().bytes)
    metrics.STORAGE_TOMBSTONES.set_function(lambda: engine.stats().tombstones)
    metrics.STORAGE_PURGED.set_function(lambda: engine.stats().purged)
    metrics.STORAGE_OLDEST_REPAIR.set_function(lambda: _oldest_repair_age(engine))
    metrics.serve(config.metrics_port, config.host)
    address = f"{config.host}:{config.port}"
    if config.tls is not None:
        bound = server.add_secure_port(address, ServerTls(config.tls, require_client_cert=True).credentials())
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise SystemExit(f"storage node {config.node_id}: cannot listen on {address}")
    await server.start()
    await health.start()
    stats = engine.stats()
    log.info(
        "Storage node started",
        node_id=config.node_id,
        address=address,
        data_dir=str(config.data_dir),
        keys=stats.keys,
        fence=engine.fence(),
        tls=config.tls is not None,
    )
    if warning:
        metrics.INSECURE.set(1)
        log.warning(warning, node_id=config.node_id)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("Storage node stopping", node_id=config.node_id)
    await health.stop()
    await server.stop(grace=5)
    await service.close()
    await committer.stop()
    await load.stop()
    engine.close()
    log.info("Storage node stopped", node_id=config.node_id)
