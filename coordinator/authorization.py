"""The coordinator's authorization wrapper: authenticate the caller, apply access.RULES, audit admin calls.

Only CoordinatorService methods are checked; gRPC health and reflection stay
open (load balancers probe them without credentials).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from pairdb.coordinator import access
from pairdb.coordinator.audit import Auditor
from pairdb.coordinator.authentication import Authenticator
from pairdb.kernel.errors import PairdbError
from pairdb.security.roles import Principal
from pairdb.serving.interception import ServicerContext, Stream, Unary


class Authorization:
    """A Wrapper (serving/interception.py) for the coordinator's server."""

    def __init__(self, authenticator: Authenticator, auditor: Auditor) -> None:
        self._authenticator = authenticator
        self._auditor = auditor

    def unary(self, method: str, inner: Unary) -> Unary:
        if not method.startswith(f"/{access.SERVICE}/"):
            return inner
        action = method.rpartition("/")[2]
        rule = access.rule(method)
        audited = rule is None or rule.need is access.Need.ADMIN

        async def authorized(request: Any, context: ServicerContext) -> Any:
            principal = await self._admit(action, method, request, context, audited)
            if not audited:
                return await inner(request, context)
            outcome, message = "UNKNOWN", ""
            try:
                reply = await inner(request, context)
                outcome = "OK"
                return reply
            except grpc.aio.AbortError:
                code = context.code()
                outcome = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                message = context.details() or ""
                raise
            finally:
                await self._auditor.record(principal, action, request, outcome, message)

        return authorized

    def stream(self, method: str, inner: Stream) -> Stream:
        if not method.startswith(f"/{access.SERVICE}/"):
            return inner
        action = method.rpartition("/")[2]

        async def authorized(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            await self._admit(action, method, request, context, audited=True)
            async for reply in inner(request, context):
                yield reply

        return authorized

    async def _admit(
        self, action: str, method: str, request: Any, context: ServicerContext, audited: bool
    ) -> Principal:
        """The caller, allowed to make this call; otherwise the call is aborted (and audited)."""
        try:
            principal = await self._authenticator.principal(context)
        except PairdbError as exc:
            if audited:
                await self._auditor.record(None, action, request, exc.status, exc.message, row=False)
            await context.abort(grpc.StatusCode[exc.status], exc.message)
            raise AssertionError("unreachable: abort raises") from None
        refused = access.denial(principal, method, request)
        if refused is not None:
            if audited:
                await self._auditor.record(principal, action, request, "PERMISSION_DENIED", refused)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        access.bind(principal)
        return principal
