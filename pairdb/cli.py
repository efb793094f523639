"""The `pairdb` command: run the processes, and talk to a cluster."""

from __future__ import annotations

import os

# `pairdb demo`, `dev` and `coordinator --processes` start processes (fork, then exec) while gRPC
# runs here; gRPC's fork handlers can crash such a child before its exec. Off before grpc loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog

from pairdb import config, credentials, loading, progress
from pairdb.client import (
    CONSISTENCY,
    DEFAULT_ADDRESS,
    Client,
    ClientError,
    StartedChange,
    Tenant,
)
from pairdb.kernel.clocks import DEFAULT_MAX_OFFSET_MS
from pairdb.kernel.repair import DEFAULT_INTERVAL_HOURS
from pairdb.local.processes import GRPC_QUIET, die_with_parent
from pairdb.security.certs import CertError
from pairdb.security.exposure import Exposed
from pairdb.security.secrets import mask_dsn, mask_secrets
from pairdb.security.tls import TlsError, TlsFiles
from pairdb.serving import logs, loops, priority
from pairdb.serving.server import COORDINATOR_MAX_CONCURRENT_RPCS, STORAGE_NODE_MAX_CONCURRENT_RPCS

if TYPE_CHECKING:
    from pairdb.security.temporal_access import TemporalAccess

DEV_COORDINATOR_PORT = 50051
DEV_STORAGE_BASE_PORT = 7001
DEV_POSTGRES_PORT = 54329
# `pairdb dev` keeps its CA, certificates and admin key here; client commands run here find them.
DEV_DATA_DIR, DEV_CERTS_DIR, DEV_CA = credentials.DEV_DATA_DIR, credentials.DEV_CERTS_DIR, credentials.DEV_CA
DEV_ADMIN_KEY_FILE = credentials.DEV_ADMIN_KEY_FILE


def _add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--coordinator",
        default=DEFAULT_ADDRESS,
        help="coordinator address host:port (env PAIRDB_COORDINATOR; default %(default)s)",
    )
    # Never the key itself on the command line: `ps` shows it to everyone.
    p.add_argument(
        "--api-key-file",
        default=None,
        metavar="PATH",
        help="file holding the API key (env PAIRDB_API_KEY_FILE); the key itself may come from env "
        f"PAIRDB_API_KEY; default: {DEV_ADMIN_KEY_FILE} when it exists (written by `pairdb dev`)",
    )
    _add_tls_flags(p, "this client (optional; role admin gives the admin role)")


def _add_tls_flags(p: argparse.ArgumentParser, who: str) -> None:
    """--tls-ca/--tls-cert/--tls-key; who: what the pair is for, in the help."""
    p.add_argument(
        "--tls-ca", type=Path, default=None, help="the cluster CA's certificate (ca.crt; env PAIRDB_TLS_CA)"
    )
    p.add_argument("--tls-cert", type=Path, default=None, help=f"{who}'s certificate (env PAIRDB_TLS_CERT)")
    p.add_argument("--tls-key", type=Path, default=None, help=f"{who}'s private key (env PAIRDB_TLS_KEY)")


def _add_insecure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening beyond loopback without TLS, a remote PostgreSQL without "
        "sslmode=verify-full, and (coordinator) every caller without credentials as an anonymous "
        "admin: never in production",
    )


def _add_temporal_access(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temporal-tls-ca", type=Path, default=None, help="CA of Temporal's frontend certificate")
    p.add_argument("--temporal-tls-cert", type=Path, default=None, help="client certificate for Temporal")
    p.add_argument("--temporal-tls-key", type=Path, default=None, help="its private key")
    p.add_argument(
        "--temporal-tls",
        action="store_true",
        help="reach Temporal over TLS with the system's trusted roots; an API key (Temporal Cloud) comes "
        "from env PAIRDB_TEMPORAL_API_KEY or PAIRDB_TEMPORAL_API_KEY_FILE, never a flag",
    )


def _temporal_access(args: argparse.Namespace) -> TemporalAccess:
    from pairdb.security.temporal_access import TemporalAccess

    return TemporalAccess(
        TlsFiles.from_options(args.temporal_tls_ca, args.temporal_tls_cert, args.temporal_tls_key),
        args.temporal_tls,
        config.secret_from_env("temporal_api_key"),
    )


def _client_tls(args: argparse.Namespace) -> TlsFiles | None:
    return credentials.tls(args.tls_ca, args.tls_cert, args.tls_key)


def _add_certs_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--certs-dir",
        type=Path,
        default=DEV_CERTS_DIR,
        help="where the CA and certificates are (default %(default)s)",
    )


def _cert(args: argparse.Namespace) -> int:
    from pairdb.security import certs
    from pairdb.security.roles import Role

    if args.cert_command == "create-ca":
        issued = certs.create_ca(args.certs_dir)
        print(f"CA created: {issued.cert} (share it) and {issued.key} (keep it secret, off the servers)")
    elif args.cert_command in ("create-node", "create-client"):
        hosts = tuple(getattr(args, "host", ()))
        issued = certs.create_cert(
            args.certs_dir, args.name, Role(args.role), hosts=hosts, overwrite=args.overwrite
        )
        print(f"certificate for {args.name} (role {args.role}): {issued.cert} and {issued.key}")
    else:
        for path in args.files:
            print(certs.describe(path))
    return 0


def _add_consistency(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--consistency",
        choices=sorted(CONSISTENCY),
        default="QUORUM",
        help="consistency level (default %(default)s)",
    )


def _add_metrics_port(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus /metrics on this port (env PAIRDB_METRICS_PORT; default: off)",
    )


def _add_max_concurrent_rpcs(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=default,
        help="RPCs served at once; more are refused with RESOURCE_EXHAUSTED, for the caller to retry "
        "(0: no bound; default %(default)s)",
    )


_BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_BYTE_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def byte_size(text: str) -> int:
    """A byte count: 1000000, 1MB, 1.5GB, 512MiB."""
    raw = text.strip().upper().replace(" ", "")
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number) :]
    try:
        if unit not in _BYTE_UNITS:
            raise ValueError(unit)
        n = int(float(number) * _BYTE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1000000, 500MB, 2GiB)") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a size is not negative: {text!r}")
    return n


def _add_tenant_limits(p: argparse.ArgumentParser, default: int | None) -> None:
    keeps = "default: unchanged" if default is None else "default: 0, unlimited"
    p.add_argument(
        "--max-ops-per-second",
        type=int,
        default=default,
        metavar="N",
        help="requests per second through each coordinator process, a batch's items one each; "
        f"more get RESOURCE_EXHAUSTED (0: unlimited; {keeps})",
    )
    p.add_argument(
        "--max-bytes",
        type=byte_size,
        default=default,
        metavar="SIZE",
        help="live data (keys and values, once per key, not per replica) past which writes, not "
        f"deletes, get RESOURCE_EXHAUSTED, e.g. 10GB (0: unlimited; {keeps})",
    )


def _add_max_clock_offset(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-clock-offset-ms",
        type=int,
        default=DEFAULT_MAX_OFFSET_MS,
        help="largest clock offset between any two processes of the cluster; versions further ahead "
        "are refused, and ordering is guaranteed within it (default %(default)s)",
    )


def _add_event_loop(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="the event loop the server runs on; uvloop measured faster (bench/rpc.py) (default %(default)s)",
    )


def _add_log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        default="INFO",
        help="DEBUG, INFO, WARNING or ERROR (env PAIRDB_LOG_LEVEL; default %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairdb", description="pairdb: a replicated key-value store that grows its cluster online"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="TOML configuration file (env PAIRDB_CONFIG; default ./pairdb.toml if present)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="configuration")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cp = csub.add_parser(
        "show", help="print the effective configuration of a command and where each value came from"
    )
    cp.add_argument("target", nargs=argparse.REMAINDER, help="the command, e.g. `coordinator` or `put t k v`")

    p = sub.add_parser(
        "cert",
        help="the cluster's certificate authority and certificates (TLS on every hop)",
        description="Every process of a cluster holds a certificate of the cluster's CA whose role says "
        "what it may do: storage-node (issued for its node id), coordinator, worker; clients may hold "
        "one with role admin. Keys are written 0600; keep ca.key off the servers.",
    )
    csub = p.add_subparsers(dest="cert_command", required=True, metavar="ACTION")
    cp = csub.add_parser("create-ca", help="a new cluster CA: ca.crt and ca.key")
    _add_certs_dir(cp)
    cp = csub.add_parser("create-node", help="a cluster process's certificate: NAME.crt and NAME.key")
    cp.add_argument("name", help="the storage node's id, or the coordinator's or worker's name")
    cp.add_argument(
        "--role",
        choices=["storage-node", "coordinator", "worker"],
        default="storage-node",
        help="default %(default)s",
    )
    cp.add_argument(
        "--host",
        action="append",
        default=[],
        help="a DNS name or IP address it is reached by (repeatable; a node is always checked by its id)",
    )
    cp.add_argument("--overwrite", action="store_true", help="re-issue (rotation; servers reload it)")
    _add_certs_dir(cp)
    cp = csub.add_parser("create-client", help="a client certificate: NAME.crt and NAME.key")
    cp.add_argument("name")
    cp.add_argument("--role", choices=["admin"], default="admin", help="default %(default)s")
    cp.add_argument("--overwrite", action="store_true", help="re-issue")
    _add_certs_dir(cp)
    cp = csub.add_parser("show", help="subject, role, names and expiry of certificates")
    cp.add_argument("files", nargs="+", type=Path)

    p = sub.add_parser("dev", help="run a whole local cluster in the foreground")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEV_DATA_DIR,
        help="where the cluster keeps its data, reused on the next start (default %(default)s)",
    )
    p.add_argument(
        "--port", type=int, default=DEV_COORDINATOR_PORT, help="coordinator port (default %(default)s)"
    )
    p.add_argument("--storage-nodes", type=int, default=3, help="storage nodes to run (default %(default)s)")
    p.add_argument(
        "--storage-port",
        type=int,
        default=DEV_STORAGE_BASE_PORT,
        help="first storage node's port; the others follow (default %(default)s)",
    )
    p.add_argument(
        "--temporal-port", type=int, default=7233, help="Temporal dev server's port (default %(default)s)"
    )
    p.add_argument(
        "--temporal-ui-port", type=int, default=8233, help="Temporal UI's port (default %(default)s)"
    )
    p.add_argument(
        "--postgres-port",
        type=int,
        default=DEV_POSTGRES_PORT,
        help="embedded PostgreSQL's port (default %(default)s)",
    )
    _add_log_level(p)

    p = sub.add_parser("demo", help="add a node to a live cluster under load and check nothing was lost")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".pairdb-demo"),
        help="fresh directory, wiped first (default %(default)s)",
    )
    p.add_argument("--keys", type=int, default=100_000, help="sample keys to load (default %(default)s)")

    p = sub.add_parser("storage-node", help="run one storage node")
    p.add_argument("--node-id", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    _add_tls_flags(p, "this node (pairdb cert create-node NODE_ID)")
    _add_insecure(p)
    _add_max_concurrent_rpcs(p, STORAGE_NODE_MAX_CONCURRENT_RPCS)
    _add_max_clock_offset(p)
    _add_metrics_port(p)
    _add_event_loop(p)
    _add_log_level(p)

    p = sub.add_parser("coordinator", help="run one coordinator")
    p.add_argument("--port", type=int, default=DEV_COORDINATOR_PORT, help="default %(default)s")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--postgres-dsn",
        default=None,
        help="PostgreSQL metadata DSN (required); prefer env PAIRDB_POSTGRES_DSN or "
        "PAIRDB_POSTGRES_DSN_FILE (a file holding it): `ps` shows a flag to every user",
    )
    p.add_argument("--coordinator-id", default="", help="stable id (default coordinator-HOSTNAME-PORT)")
    p.add_argument(
        "--temporal",
        default="",
        help="Temporal frontend host:port, needed to run migrations (env PAIRDB_TEMPORAL)",
    )
    p.add_argument(
        "--temporal-ui",
        default="",
        help="Temporal UI base URL, for the workflow links in migration status (env PAIRDB_TEMPORAL_UI)",
    )
    p.add_argument(
        "--storage-timeout",
        type=float,
        default=2.0,
        help="deadline of each storage-node call, seconds (default %(default)s)",
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=10.0,
        help="lease on the cluster view: without PostgreSQL for this long the coordinator stops "
        "serving, and a barrier stops waiting for it (default %(default)s)",
    )
    p.add_argument(
        "--max-hints-per-node",
        type=int,
        default=100_000,
        help="hinted handoff: writes a storage node missed, kept for it until it is back; past this "
        "many for one node, further ones are dropped (default %(default)s)",
    )
    p.add_argument(
        "--max-hint-window",
        type=float,
        default=10_800.0,
        help="hinted handoff: seconds a hint is kept (older ones are deleted, never replayed) and a node "
        "may fail before it gets no new ones; at most 86400, far below the tombstone grace period "
        "(default %(default)s)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="coordinator processes sharing the port (SO_REUSEPORT), one per core to use; process i "
        "takes id COORDINATOR_ID-i and metrics port METRICS_PORT+i (default %(default)s)",
    )
    _add_tls_flags(p, "this coordinator (pairdb cert create-node NAME --role coordinator)")
    p.add_argument(
        "--tls-require-client-cert",
        action="store_true",
        help="clients must present a certificate of the cluster CA (pairdb cert create-client); "
        "one with role admin needs no API key",
    )
    _add_insecure(p)
    _add_temporal_access(p)
    _add_max_concurrent_rpcs(p, COORDINATOR_MAX_CONCURRENT_RPCS)
    _add_max_clock_offset(p)
    _add_metrics_port(p)
    _add_event_loop(p)
    _add_log_level(p)

    p = sub.add_parser(
        "worker", help="run a migration worker (the ring-change workflows and their activities)"
    )
    p.add_argument(
        "--postgres-dsn",
        default=None,
        help="PostgreSQL metadata DSN (required); prefer env PAIRDB_POSTGRES_DSN or "
        "PAIRDB_POSTGRES_DSN_FILE (a file holding it): `ps` shows a flag to every user",
    )
    p.add_argument(
        "--temporal",
        default="127.0.0.1:7233",
        help="Temporal frontend host:port (env PAIRDB_TEMPORAL; default %(default)s)",
    )
    _add_metrics_port(p)
    p.add_argument(
        "--sdk-metrics-port",
        type=int,
        default=0,
        help="port of the Temporal SDK's own Prometheus metrics (default: off)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=priority.BACKGROUND_NICE,
        help="lower the worker's CPU priority by this much (default %(default)s): its copies and "
        "verifications are background work, and on a machine it shares with storage nodes or "
        "coordinators the clients' requests come first; 0 keeps the priority it was started with",
    )
    _add_tls_flags(p, "this worker (pairdb cert create-node NAME --role worker)")
    _add_insecure(p)
    _add_temporal_access(p)
    _add_log_level(p)

    p = sub.add_parser("node", help="manage storage nodes")
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    np_ = nsub.add_parser("add", help="add a storage node online (runs NodeAdditionWorkflow)")
    np_.add_argument("node_id")
    np_.add_argument("address", metavar="HOST:PORT")
    np_.add_argument("--vnodes", type=int, default=0, help="virtual nodes (default 128)")
    _add_change_flags(np_)
    np_ = nsub.add_parser(
        "remove",
        help="decommission a node online (runs NodeRemovalWorkflow)",
        description="Its ranges are copied to the nodes that gain them, reads move, its data is wiped "
        "and it ends `removed`. With --dead the node is never asked: its ranges are re-replicated "
        "from the surviving replicas.",
    )
    np_.add_argument("node_id")
    np_.add_argument("--dead", action="store_true", help="the node is dead: copy from the survivors")
    _add_change_flags(np_)
    np_ = nsub.add_parser(
        "replace",
        help="a new node takes a dead node's place (runs NodeReplacementWorkflow)",
        description="NEW_ID, already running at HOST:PORT and empty, takes DEAD_ID's tokens and is "
        "filled from the surviving replicas; DEAD_ID never has to answer and ends `removed`.",
    )
    np_.add_argument("dead_node_id", metavar="DEAD_ID")
    np_.add_argument("node_id", metavar="NEW_ID")
    np_.add_argument("address", metavar="HOST:PORT")
    _add_change_flags(np_)

    p = sub.add_parser("migration", help="follow and steer migrations")
    msub = p.add_subparsers(dest="migration_command", required=True, metavar="ACTION")
    for action, text in (
        ("status", "show a migration's phase, status and progress"),
        ("cancel", "cancel a migration before cutover"),
        ("rollback", "roll a migration back during cutover"),
        ("pause", "pause the data copy"),
        ("resume", "resume the data copy"),
        ("wait", "show live progress until the migration ends"),
    ):
        mp = msub.add_parser(action, help=text)
        mp.add_argument("migration_id")
        _add_client_flags(mp)
    mp = msub.add_parser("list", help="every ring change: queued, running and the recent ended ones")
    mp.add_argument("--recent", type=int, default=20, help="ended ones shown (default %(default)s)")
    _add_client_flags(mp)
    mp = msub.add_parser("throttle", help="limit the copy rate (0 removes the limit)")
    mp.add_argument("migration_id")
    mp.add_argument("keys_per_second", type=int)
    _add_client_flags(mp)

    p = sub.add_parser("put", help="write a value")
    p.add_argument("tenant")
    p.add_argument("key")
    p.add_argument("value")
    _add_consistency(p)
    _add_client_flags(p)

    p = sub.add_parser("get", help="read a value (prints it; exit 1 if not found)")
    p.add_argument("tenant")
    p.add_argument("key")
    _add_consistency(p)
    _add_client_flags(p)

    p = sub.add_parser("delete", help="delete a key")
    p.add_argument("tenant")
    p.add_argument("key")
    _add_consistency(p)
    _add_client_flags(p)

    p = sub.add_parser(
        "load",
        help="bulk-load a JSON Lines or CSV file of tenant, key, value (resumable)",
        description="Write every row of FILE through BatchWrite. JSON Lines: "
        '{"tenant": ..., "key": ..., "value": ...} (or "value_base64"); CSV: tenant,key,value. '
        "Rows that cannot be stored go to FILE.rejected.jsonl and the load goes on; an interrupted "
        "load resumes where it stopped when run again (state in FILE.load-state).",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--format", choices=["jsonl", "csv"], default=None, help="default: from the file name")
    p.add_argument(
        "--concurrency", type=int, default=4, help="batches in flight at once (default %(default)s)"
    )
    p.add_argument("--restart", action="store_true", help="start from the top, ignoring a saved position")
    _add_consistency(p)
    _add_client_flags(p)

    p = sub.add_parser("tenant", help="manage tenants")
    tsub = p.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")
    tp = tsub.add_parser("create", help="create a tenant")
    tp.add_argument("tenant")
    tp.add_argument("--rf", type=int, default=0, help="replication factor (default 3)")
    tp.add_argument(
        "--gc-grace",
        type=int,
        default=None,
        metavar="SECONDS",
        help="keep deletes' tombstones at least this long (default 864000: 10 days); a replica "
        "down longer must be repaired before it returns, or replaced",
    )
    _add_tenant_limits(tp, default=0)
    _add_client_flags(tp)
    tp = tsub.add_parser(
        "set-limits",
        help="change a tenant's request rate and storage limits (admin only)",
        description="A limit not given is left as it is; 0 removes it. Refused requests get "
        "RESOURCE_EXHAUSTED. Coordinators apply the change when they reload the registry (at once).",
    )
    tp.add_argument("tenant")
    _add_tenant_limits(tp, default=None)
    _add_client_flags(tp)
    tp = tsub.add_parser(
        "set-rf",
        help="change a tenant's replication factor online (runs ReplicationChangeWorkflow)",
        description="Raising it copies the tenant's data to the replicas it gains before reads count on "
        "them; lowering it moves reads to the smaller set first, then deletes the extra copies.",
    )
    tp.add_argument("tenant")
    tp.add_argument("replication_factor", type=int, metavar="N")
    _add_change_flags(tp)

    p = sub.add_parser(
        "init", help="start a new cluster: join its first storage nodes to the empty ring, create tenants"
    )
    p.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="a first storage node (repeatable)",
    )
    p.add_argument("--tenant", action="append", default=[], metavar="NAME[:RF]", help="a tenant to create")
    p.add_argument(
        "--repair-every",
        type=int,
        default=DEFAULT_INTERVAL_HOURS,
        metavar="HOURS",
        help="create the Temporal Schedule `pairdb-repair` repairing every tenant this often "
        "(default %(default)s; 0: no schedule)",
    )
    p.add_argument(
        "--postgres-dsn",
        default=None,
        help="PostgreSQL metadata DSN, to make the first admin key (env PAIRDB_POSTGRES_DSN)",
    )
    p.add_argument(
        "--admin-key-file",
        default=None,
        metavar="PATH",
        help="when the cluster has no admin key yet, make one, write it here (mode 0600; never "
        "overwritten) and use it for the rest of init",
    )
    _add_client_flags(p)

    p = sub.add_parser(
        "repair",
        help="anti-entropy repair: bring every replica level with the others (runs RepairWorkflow)",
        description="Compares every range's replicas by digest, narrows down where they differ and "
        "sends each replica only what it lacks or holds older; then purges tombstones older than the "
        "tenant's grace period where every replica answered. It waits while a ring change runs and "
        "yields to client traffic. Follow, pause or cancel it as a migration.",
    )
    p.add_argument("--tenant", default="", help="only this tenant (default: every tenant)")
    p.add_argument("--wait", action="store_true", help="show live progress until the repair ends")
    p.add_argument("--throttle", type=int, default=0, help="records sent per second at most (default: none)")
    _add_client_flags(p)

    p = sub.add_parser("nodes", help="list storage nodes")
    _add_client_flags(p)

    p = sub.add_parser("key", help="manage API keys (admin)")
    ksub = p.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    kp = ksub.add_parser(
        "create",
        help="create an API key and print it (shown this once)",
        description="An admin key manages the cluster; a tenant key reads and writes (or, with "
        "--read-only, only reads) one tenant's data.",
    )
    scope = kp.add_mutually_exclusive_group(required=True)
    scope.add_argument("--admin", action="store_true", help="an admin key: the whole cluster")
    scope.add_argument("--tenant", default=None, help="a key for this tenant's data")
    kp.add_argument("--read-only", action="store_true", help="with --tenant: reads only")
    kp.add_argument("--name", default="", help="what the key is for, shown in `pairdb key list`")
    _add_client_flags(kp)
    kp = ksub.add_parser("list", help="list API keys (never their secrets)")
    _add_client_flags(kp)
    kp = ksub.add_parser("revoke", help="revoke an API key (at once on this coordinator, within 2 s on all)")
    kp.add_argument("key_id", metavar="KEY_ID")
    _add_client_flags(kp)

    p = sub.add_parser("audit", help="show the audit log: admin calls, who made them and how they ended")
    p.add_argument("--limit", type=int, default=50, help="newest events shown (default %(default)s)")
    _add_client_flags(p)
    return parser


def _limits(tenant: Tenant) -> str:
    rate = (
        f"{tenant.max_ops_per_second} requests/s per coordinator"
        if tenant.max_ops_per_second
        else "no rate limit"
    )
    quota = f"quota {tenant.max_bytes} bytes" if tenant.max_bytes else "no storage quota"
    stored = "" if tenant.stored_bytes is None else f", stores about {tenant.stored_bytes} bytes"
    return f"{rate}, {quota}{stored}"


def _api_key(args: argparse.Namespace) -> str | None:
    try:
        return credentials.api_key(getattr(args, "api_key_file", None))
    except credentials.CredentialsError as exc:
        raise UsageError(str(exc)) from None


async def _init_key(args: argparse.Namespace) -> str | None:
    """init's key: the first admin key (--postgres-dsn, --admin-key-file), else the CLI's."""
    if not args.admin_key_file:
        return _api_key(args)
    if not args.postgres_dsn:
        raise UsageError("--admin-key-file needs --postgres-dsn (or PAIRDB_POSTGRES_DSN): the first key "
                         "is made in PostgreSQL")  # fmt: skip
    from pairdb.coordinator.first_key import ensure_admin_key

    admin = await ensure_admin_key(args.postgres_dsn, Path(args.admin_key_file))
    if admin is None:
        print("an admin key exists already: using the CLI's key (PAIRDB_API_KEY or --api-key-file)")
        return _api_key(args)
    if admin.created:
        print(f"admin key written to {admin.path} (mode 0600): keep it safe, it manages the cluster")
    return admin.token


async def _key(client: Client, args: argparse.Namespace) -> int:
    if args.key_command == "create":
        if args.admin and args.read_only:
            raise UsageError("--read-only goes with --tenant: an admin key is never read-only")
        role = "admin" if args.admin else ("read-only" if args.read_only else "read-write")
        created = await client.create_api_key(role, args.tenant or "", args.name)
        scope = f" on tenant {created.key.tenant_id}" if created.key.tenant_id else ""
        print(f"created {role} key {created.key.key_id}{scope}; it is shown only this once:", file=sys.stderr)
        print(created.api_key)
    elif args.key_command == "list":
        for k in await client.api_keys():
            state = f"revoked {_when(k.revoked_at)}" if k.revoked_at else "active"
            tenant = k.tenant_id or "-"
            print(
                f"{k.key_id}\t{k.role}\t{tenant}\t{state}\t{k.name}\t"
                f"created {_when(k.created_at)} by {k.created_by}"
            )
    elif args.key_command == "revoke":
        revoked = await client.revoke_api_key(args.key_id)
        print(f"key {revoked.key_id} revoked (other coordinators refuse it within 2 s)")
    return 0


def _when(unix_seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_seconds))


async def _audit(client: Client, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise UsageError("--limit must be between 1 and 1000")
    for e in await client.audit_events(args.limit):
        at = _when(e.at_ms / 1000)
        note = f"\t{e.message}" if e.message else ""
        print(f"{at}\t{e.principal}\t{e.role or '-'}\t{e.action}\t{e.outcome}\t{e.target}{note}")
    return 0


async def _client_command(args: argparse.Namespace) -> int:
    api_key = await _init_key(args) if args.command == "init" else _api_key(args)
    async with Client(args.coordinator, tls=_client_tls(args), api_key=api_key) as client:
        if args.command == "put":
            hlc, origin = await client.put(args.tenant, args.key, args.value.encode(), args.consistency)
            print(f"ok version={hlc}@{origin}")
        elif args.command == "get":
            value = await client.get(args.tenant, args.key, args.consistency)
            if not value.found:
                print(f"not found: {args.tenant}/{args.key}", file=sys.stderr)
                return 1
            sys.stdout.buffer.write(value.value + b"\n")
        elif args.command == "delete":
            hlc, origin = await client.delete(args.tenant, args.key, args.consistency)
            print(f"deleted version={hlc}@{origin}")
        elif args.command == "tenant" and args.tenant_command == "set-rf":
            return await _started(
                client,
                args,
                client.set_replication_factor(args.tenant, args.replication_factor, **_change(args)),
            )
        elif args.command == "repair":
            return await _started(
                client, args, client.repair(args.tenant, throttle_keys_per_second=args.throttle)
            )
        elif args.command == "tenant" and args.tenant_command == "set-limits":
            tenant = await client.set_tenant_limits(
                args.tenant, max_ops_per_second=args.max_ops_per_second, max_bytes=args.max_bytes
            )
            print(f"tenant {args.tenant}: {_limits(tenant)}")
        elif args.command == "tenant":
            rf = await client.create_tenant(
                args.tenant,
                args.rf,
                gc_grace_seconds=args.gc_grace,
                max_ops_per_second=args.max_ops_per_second,
                max_bytes=args.max_bytes,
            )
            print(f"tenant {args.tenant} created with replication factor {rf}")
        elif args.command == "init":
            return await _init(client, args)
        elif args.command == "nodes":
            for node in await client.nodes():
                print(f"{node.node_id}\t{node.address}\t{node.status}\tvnodes={node.virtual_nodes}")
        elif args.command == "node" and args.node_command == "remove":
            return await _started(
                client, args, client.remove_node(args.node_id, dead=args.dead, **_change(args))
            )
        elif args.command == "node" and args.node_command == "replace":
            host, port = _address(args.address)
            replace = client.replace_node(args.dead_node_id, args.node_id, host, port, **_change(args))
            return await _started(client, args, replace)
        elif args.command == "node":
            return await _node_add(client, args)
        elif args.command == "migration":
            return await _migration(client, args)
        elif args.command == "load":
            return await _load(client, args)
        elif args.command == "key":
            return await _key(client, args)
        elif args.command == "audit":
            return await _audit(client, args)
    return 0


async def _load(client: Client, args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"error: no such file: {args.file}", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("error: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        fmt = loading.detect_format(args.file, args.format)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loader = loading.Loader(
        client,
        args.file,
        fmt,
        consistency=args.consistency,
        concurrency=args.concurrency,
        restart=args.restart,
    )
    try:
        report = await loader.run()
    except loading.LoadFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rate = report.loaded / max(report.seconds, 1e-9)
    print(f"loaded {report.loaded:,} keys in {report.seconds:.1f} s ({rate:,.0f} keys/s)")
    if report.rejected_path is not None:
        print(f"rejected {report.rejected:,} rows: see {report.rejected_path}")
    return 0


async def _init(client: Client, args: argparse.Namespace) -> int:
    """Idempotent: nodes and tenants that exist already are left as they are."""
    known = {n.node_id for n in await client.nodes()}
    for spec in args.node:
        node_id, _, address = spec.partition("=")
        host, sep, port = address.rpartition(":")
        if not node_id or not sep or not port.isdigit():
            print(f"error: --node must be ID=HOST:PORT, got {spec!r}", file=sys.stderr)
            return 2
        if node_id not in known:
            print((await client.add_node(node_id, host, int(port))).message)
    for spec in args.tenant:
        name, _, rf = spec.partition(":")
        try:
            await client.create_tenant(name, int(rf or 0))
            print(f"tenant {name} created")
        except ClientError as exc:
            if exc.code.name != "ALREADY_EXISTS":
                raise
    if args.repair_every:
        print(await client.schedule_repair(args.repair_every))
    return 0


def _add_change_flags(p: argparse.ArgumentParser) -> None:
    """What every ring change takes: follow it, throttle its copy, hold it at cutover."""
    p.add_argument("--wait", action="store_true", help="show live progress until the migration ends")
    p.add_argument("--throttle", type=int, default=0, help="copy rate limit in keys/s (default: none)")
    p.add_argument(
        "--hold-at-cutover",
        action="store_true",
        help="stop in cutover (reads on the new replicas) until `pairdb migration resume` or rollback",
    )
    _add_client_flags(p)


def _change(args: argparse.Namespace) -> dict[str, Any]:
    return {"hold_at_cutover": args.hold_at_cutover, "throttle_keys_per_second": args.throttle}


class UsageError(Exception):
    """A command line that cannot be acted on: exit 2 with the message."""


def _address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"address must be HOST:PORT, got {address!r}")
    return host, int(port)


async def _started(client: Client, args: argparse.Namespace, start: Awaitable[StartedChange]) -> int:
    started = await start
    print(started.message)
    print(f"migration {started.migration_id}")
    return await progress.follow(client, started.migration_id) if args.wait else 0


async def _node_add(client: Client, args: argparse.Namespace) -> int:
    host, port = _address(args.address)
    added = await client.add_node(
        args.node_id,
        host,
        port,
        args.vnodes,
        hold_at_cutover=args.hold_at_cutover,
        throttle_keys_per_second=args.throttle,
    )
    print(added.message)
    if not added.migration_id:
        return 0
    print(f"migration {added.migration_id}")
    if not args.wait:
        return 0
    return await progress.follow(client, added.migration_id)


async def _migration(client: Client, args: argparse.Namespace) -> int:
    action = args.migration_command
    if action == "list":
        print(progress.listing(await client.migrations(args.recent)))
        return 0
    mid = args.migration_id
    if action == "status":
        print(progress.describe(await client.migration(mid)))
    elif action == "wait":
        return await progress.follow(client, mid)
    elif action == "cancel":
        print(await client.cancel_migration(mid))
    elif action == "rollback":
        print(await client.rollback_migration(mid))
    elif action in ("pause", "resume"):
        print(await client.pause_migration(mid, action == "pause"))
    elif action == "throttle":
        if args.keys_per_second < 0:
            print("error: keys_per_second must be 0 (no limit) or positive", file=sys.stderr)
            return 2
        print(await client.throttle_migration(mid, args.keys_per_second))
    return 0


async def _run_until_signal(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
        await stopping.wait()
    finally:
        await stop()


def _passed_on(args: argparse.Namespace, *dests: str) -> list[str]:
    """The flags for dests that are set, to give a child process the same options."""
    flags: list[str] = []
    for dest in dests:
        value = getattr(args, dest)
        if value is True:
            flags.append("--" + dest.replace("_", "-"))
        elif value:
            flags += ["--" + dest.replace("_", "-"), str(value)]
    return flags


async def _coordinator_processes(args: argparse.Namespace) -> int:
    """--processes N: N coordinators on one port, each its own process and id; restarted if one dies.

    gRPC servers bind with SO_REUSEPORT, so the kernel spreads connections over them.
    """
    from pairdb.coordinator.server import CoordinatorConfig

    base = CoordinatorConfig(args.postgres_dsn, args.host, args.port, args.coordinator_id).effective_id
    log = structlog.get_logger()

    def argv(i: int) -> list[str]:
        return [
            sys.executable, "-m", "pairdb.cli", "coordinator",
            "--processes", "1", "--coordinator-id", f"{base}-{i}",
            "--host", args.host, "--port", str(args.port),
            "--temporal", args.temporal, "--temporal-ui", args.temporal_ui,
            "--storage-timeout", str(args.storage_timeout), "--lease-seconds", str(args.lease_seconds),
            "--max-clock-offset-ms", str(args.max_clock_offset_ms),
            "--max-hints-per-node", str(args.max_hints_per_node),
            "--max-hint-window", str(args.max_hint_window),
            "--max-concurrent-rpcs", str(args.max_concurrent_rpcs),
            "--metrics-port", str(args.metrics_port + i if args.metrics_port else 0),
            "--event-loop", args.event_loop, "--log-level", args.log_level,
            *_passed_on(args, "tls_ca", "tls_cert", "tls_key", "temporal_tls_ca", "temporal_tls_cert",
                        "temporal_tls_key", "temporal_tls", "insecure", "tls_require_client_cert"),
        ]  # fmt: skip

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    # The DSN holds a password: through the environment, never on a command line `ps` shows.
    env = {**os.environ, **config.secret_environment({"postgres_dsn": args.postgres_dsn})}

    async def keep(i: int) -> None:
        while not stopping.is_set():
            child = await asyncio.create_subprocess_exec(*argv(i), env=env)
            waiting = asyncio.ensure_future(child.wait())
            stop = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.is_set():
                stop.cancel()
                child.terminate()
                await waiting
                return
            stop.cancel()
            log.error(
                "Coordinator process exited; restarting it",
                coordinator_id=f"{base}-{i}",
                code=child.returncode,
            )
            await asyncio.sleep(1)

    await asyncio.gather(*(keep(i) for i in range(1, args.processes + 1)))
    return 0


async def _dev(args: argparse.Namespace) -> None:
    from pairdb.local.cluster import LocalCluster

    cluster = LocalCluster(
        args.data_dir,
        storage_nodes=args.storage_nodes,
        coordinator_port=args.port,
        storage_base_port=args.storage_port,
        postgres_port=args.postgres_port,
        temporal_port=args.temporal_port,
        temporal_ui_port=args.temporal_ui_port,
        log_level=args.log_level,
        repair_every_hours=DEFAULT_INTERVAL_HOURS,
    )

    async def start() -> None:
        await cluster.start()
        print(f"pairdb dev cluster is up (data in {cluster.data_dir})")
        print(f"  coordinator   {cluster.coordinator_address}")
        for node in cluster.nodes.values():
            print(f"  storage node  {node.node_id} {node.address}")
        print(f"  postgresql    {mask_dsn(cluster.dsn)}  (password in {cluster.postgres.password_file})")
        print(f"  temporal      {cluster.temporal_server.address}")
        print(f"  temporal UI   {cluster.temporal_server.ui_url}")
        print(f"  logs          {cluster.data_dir / 'logs'}")
        print(f"  TLS           every hop; CA {cluster.certs_dir / 'ca.crt'}")
        if cluster.certs_dir / "ca.crt" != DEV_CA.resolve():
            print(f"  (from another directory: export PAIRDB_TLS_CA={cluster.certs_dir / 'ca.crt'})")
        print(f"  admin key     {cluster.admin_key_file} (mode 0600)")
        if cluster.admin_key_file == DEV_ADMIN_KEY_FILE.resolve():
            print("  the CLI finds the admin key there when run from this directory")
        else:
            print(f"  the CLI needs: export PAIRDB_API_KEY_FILE={cluster.admin_key_file}")
        print("try: pairdb put default k v && pairdb get default k   (Ctrl-C stops the cluster)", flush=True)

    async def stop() -> None:
        print("stopping the cluster...", flush=True)
        await cluster.stop()
        print("stopped", flush=True)

    await _run_until_signal(start, stop)


# Commands that run servers: what they write (data, logs, sockets) is theirs alone.
SERVER_COMMANDS = {"storage-node", "coordinator", "worker", "dev", "demo"}
PRIVATE_UMASK = 0o077


def _mask_tracebacks() -> None:
    """An uncaught exception's traceback is printed with every connection string's password masked."""

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        sys.stderr.write(mask_secrets("".join(traceback.format_exception(kind, value, tb))))

    sys.excepthook = hook


def _configure_logs(resolved: config.Resolved, *, json: bool, level: str) -> None:
    logs.configure(json=json, level=level)
    for warning in resolved.secrets_on_command_line():
        structlog.get_logger().warning("Secret on the command line", hint=warning)


def main(argv: list[str] | None = None) -> int:
    for name, value in GRPC_QUIET.items():
        os.environ.setdefault(name, value)  # before this process creates any channel or server
    parser = build_parser()
    resolved = config.resolve(parser, argv)
    args = resolved.args
    if args.command in SERVER_COMMANDS:
        # Before any file is created: data dirs 0700, files 0600, whatever the caller's umask.
        os.umask(PRIVATE_UMASK)
        _mask_tracebacks()
    die_with_parent()
    try:
        if args.command == "config":
            print(config.show(parser, args.target or ["coordinator"], resolved.file))
            return 0
        if args.command == "cert":
            return _cert(args)
        if args.command == "storage-node":
            from pairdb.storage_node.server import StorageNodeConfig, serve

            _configure_logs(resolved, json=True, level=args.log_level)
            loops.run(
                serve(
                    StorageNodeConfig(
                        args.node_id,
                        args.data_dir,
                        args.host,
                        args.port,
                        args.metrics_port,
                        max_clock_offset_ms=args.max_clock_offset_ms,
                        tls=TlsFiles.from_options(args.tls_ca, args.tls_cert, args.tls_key),
                        insecure=args.insecure,
                        max_concurrent_rpcs=args.max_concurrent_rpcs,
                    )
                ),
                uvloop=args.event_loop == "uvloop",
            )
        elif args.command == "coordinator":
            from pairdb.coordinator.hints import HintLimits
            from pairdb.coordinator.server import CoordinatorConfig
            from pairdb.coordinator.server import serve as serve_coordinator

            if not args.postgres_dsn:
                print(
                    "error: PAIRDB_POSTGRES_DSN, PAIRDB_POSTGRES_DSN_FILE or --postgres-dsn is required",
                    file=sys.stderr,
                )
                return 2
            if args.processes < 1:
                print("error: --processes must be at least 1", file=sys.stderr)
                return 2
            try:
                HintLimits(args.max_hints_per_node, args.max_hint_window)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            _configure_logs(resolved, json=True, level=args.log_level)
            if args.processes > 1:
                return asyncio.run(_coordinator_processes(args))
            loops.run(
                serve_coordinator(
                    CoordinatorConfig(
                        args.postgres_dsn,
                        args.host,
                        args.port,
                        args.coordinator_id,
                        args.storage_timeout,
                        lease_seconds=args.lease_seconds,
                        max_clock_offset_ms=args.max_clock_offset_ms,
                        temporal_address=args.temporal,
                        temporal_ui_url=args.temporal_ui,
                        metrics_port=args.metrics_port,
                        max_hints_per_node=args.max_hints_per_node,
                        max_hint_window=args.max_hint_window,
                        tls=TlsFiles.from_options(args.tls_ca, args.tls_cert, args.tls_key),
                        tls_require_client_cert=args.tls_require_client_cert,
                        temporal_access=_temporal_access(args),
                        insecure=args.insecure,
                        max_concurrent_rpcs=args.max_concurrent_rpcs,
                    )
                ),
                uvloop=args.event_loop == "uvloop",
            )
        elif args.command == "demo":
            from pairdb.local.demo import run_demo

            logs.configure(json=False, level="WARNING")
            return asyncio.run(run_demo(args.data_dir.resolve(), args.keys))
        elif args.command == "worker":
            from pairdb.workflows.worker import WorkerConfig
            from pairdb.workflows.worker import serve as serve_worker

            if not args.postgres_dsn:
                print(
                    "error: PAIRDB_POSTGRES_DSN, PAIRDB_POSTGRES_DSN_FILE or --postgres-dsn is required",
                    file=sys.stderr,
                )
                return 2
            _configure_logs(resolved, json=True, level=args.log_level)
            loops.run(
                serve_worker(
                    WorkerConfig(
                        args.postgres_dsn,
                        args.temporal,
                        metrics_port=args.metrics_port,
                        sdk_metrics_port=args.sdk_metrics_port,
                        tls=TlsFiles.from_options(args.tls_ca, args.tls_cert, args.tls_key),
                        temporal_access=_temporal_access(args),
                        insecure=args.insecure,
                        nice=args.nice,
                    )
                )
            )
        elif args.command == "dev":
            _configure_logs(resolved, json=False, level=args.log_level)
            asyncio.run(_dev(args))
        else:
            return asyncio.run(_client_command(args))
    except ClientError as exc:
        print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    except (UsageError, TlsError, CertError, Exposed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
