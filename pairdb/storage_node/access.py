"""Who may call a storage node: with TLS, only the cluster's coordinators, workers and nodes.

The TLS handshake has already checked the caller's certificate against the
cluster CA; this checks the role it names. Copies, repairs and cleanups (the
worker) may stream out or delete whole ranges and move the fence; a copy's
target (a storage node) may stream out the ranges it pulls, and nothing else;
coordinators only read and write records. Health and reflection stay open to
any certificate of the CA, for probes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from pairdb.proto import storage_pb2
from pairdb.security.roles import Role
from pairdb.security.tls import peer_principal
from pairdb.serving.interception import ServicerContext, Stream, Unary

SERVICE = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name
_METHOD_PREFIX = f"/{SERVICE}/"
_CLUSTER = frozenset({Role.COORDINATOR, Role.WORKER})
_WORKER = frozenset({Role.WORKER})
# Methods not for every cluster process. Deleting ranges, purging and the fence are the migration
# worker's steps only, as is having a node pull ranges; a copy's target (a storage node) streams
# the ranges it pulls out of its source.
_ROLES = {
    "ScanRange": frozenset({Role.WORKER, Role.STORAGE_NODE}),
    "DeleteRange": _WORKER,
    "PurgeTombstones": _WORKER,
    "PullRanges": _WORKER,
    "SetFence": _WORKER,
}


def allowed_roles(method: str) -> frozenset[Role] | None:
    """The roles that may call method; None: any certificate of the CA (health, reflection)."""
    if not method.startswith(_METHOD_PREFIX):
        return None
    return _ROLES.get(method.removeprefix(_METHOD_PREFIX), _CLUSTER)


class ClusterOnly:
    """The storage node's access check, a serving Wrapper; installed only when the node runs TLS."""

    def unary(self, method: str, inner: Unary) -> Unary:
        roles = allowed_roles(method)
        if roles is None:
            return inner

        async def checked(request: Any, context: ServicerContext) -> Any:
            await _check(method, roles, context)
            return await inner(request, context)

        return checked

    def stream(self, method: str, inner: Stream) -> Stream:
        roles = allowed_roles(method)
        if roles is None:
            return inner

        async def checked(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            await _check(method, roles, context)
            async for reply in inner(request, context):
                yield reply

        return checked


async def _check(method: str, roles: frozenset[Role], context: ServicerContext) -> None:
    principal = peer_principal(context)
    if principal is not None and principal.role in roles:
        return
    name = method.rsplit("/", 1)[-1]
    needed = " or ".join(sorted(r.value for r in roles))
    held = f"{principal.name} has role {principal.role.value}" if principal else "names no pairdb role"
    await context.abort(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{name} needs a cluster certificate with role {needed}; the caller's certificate {held}",
    )
