"""Who is calling: keys looked up once per TTL (unknown ones too), admin certificates, insecure mode."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pairdb.coordinator.auth_store import KeyRecord
from pairdb.coordinator.authentication import ANONYMOUS_ADMIN, KEY_TTL, STALE_LIMIT, Authenticator
from pairdb.kernel.errors import Unauthenticated, Unavailable
from pairdb.security import api_keys
from pairdb.security.roles import Principal, Role


class Store:
    """AuthStore's key lookup, counting queries; `gate` holds them until set."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.queries = 0
        self.gate = asyncio.Event()
        self.gate.set()

    def add(self, role: Role, tenant: str | None, revoked: bool = False) -> str:
        new = api_keys.generate()
        now = datetime.datetime.now(datetime.UTC)
        self.records[new.key_id] = KeyRecord(
            new.key_id, "", role, tenant, new.secret_sha256, now, "test", now if revoked else None
        )
        return new.token

    async def key(self, key_id: str) -> KeyRecord | None:
        self.queries += 1
        await self.gate.wait()
        return self.records.get(key_id)


class Context:
    def __init__(self, token: str | None = None, cert: bytes | None = None) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        self._auth = {"x509_pem_cert": [cert]} if cert else {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def authenticator(store: Store, clock: Clock | None = None, **options: Any) -> Authenticator:
    return Authenticator(store, clock=clock or Clock(), **options)  # type: ignore[arg-type]


def certificate(unit: str, name: str = "ops") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


async def test_a_valid_key_is_its_principal_and_is_looked_up_once_per_ttl() -> None:
    store, clock = Store(), Clock()
    token = store.add(Role.READ_ONLY, "a")
    auth = authenticator(store, clock)
    key_id = api_keys.parse(token).key_id
    for _ in range(5):
        assert await auth.principal(Context(token)) == Principal(key_id, Role.READ_ONLY, "a")  # type: ignore[arg-type]
    assert store.queries == 1
    clock.now += 10
    await auth.principal(Context(token))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the refresh runs in the background
    assert store.queries == 2


class FailingStore(Store):
    """A store whose PostgreSQL went away."""

    failing = False

    async def key(self, key_id: str) -> KeyRecord | None:
        if self.failing:
            self.queries += 1
            raise OSError("connection refused")
        return await super().key(key_id)


async def test_a_known_key_outlives_its_ttl_while_postgresql_is_gone_then_must_be_looked_up() -> None:
    """Serving on a live lease must not hinge on PostgreSQL for keys already known; the lease
    (shorter than STALE_LIMIT) stops the coordinator in time, and a revocation lands at the first
    refresh that reaches PostgreSQL."""
    store, clock = FailingStore(), Clock()
    token = store.add(Role.READ_WRITE, "a")
    auth = authenticator(store, clock)
    await auth.principal(Context(token))  # type: ignore[arg-type]
    store.failing = True
    clock.now += KEY_TTL + 1
    assert (await auth.principal(Context(token))).role is Role.READ_WRITE  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert store.queries == 2  # it tried, failed, and the cached key still answers
    clock.now += STALE_LIMIT
    with pytest.raises(Unavailable, match="cannot check the API key"):
        await auth.principal(Context(token))  # type: ignore[arg-type]
    # PostgreSQL is back, and the key was revoked meanwhile: the refresh refuses it.
    store.failing = False
    record = store.records[api_keys.parse(token).key_id]
    store.records[record.key_id] = dataclasses.replace(record, revoked_at=record.created_at)
    with pytest.raises(Unauthenticated, match="revoked"):
        await auth.principal(Context(token))  # type: ignore[arg-type]


async def test_unknown_keys_are_cached_too_and_concurrent_lookups_share_one_query() -> None:
    store = Store()
    auth = authenticator(store)
    unknown = "pdb_0123456789ab_" + "s" * 43
    store.gate.clear()
    calls = [asyncio.ensure_future(auth.principal(Context(unknown))) for _ in range(50)]  # type: ignore[arg-type]
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, Unauthenticated) for r in results)
    with pytest.raises(Unauthenticated, match="unknown API key 0123456789ab"):
        await auth.principal(Context(unknown))  # type: ignore[arg-type]
    assert store.queries == 1


async def test_a_revoked_key_is_refused_and_a_forgotten_one_read_again() -> None:
    store = Store()
    token = store.add(Role.READ_WRITE, "a")
    auth = authenticator(store)
    key_id = api_keys.parse(token).key_id
    await auth.principal(Context(token))  # type: ignore[arg-type]
    record = store.records[key_id]
    store.records[key_id] = dataclasses.replace(record, revoked_at=record.created_at)  # revoked elsewhere
    await auth.principal(Context(token))  # type: ignore[arg-type]  # cached: still active here
    auth.forget(key_id)
    with pytest.raises(Unauthenticated, match="revoked"):
        await auth.principal(Context(token))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("context", "says"),
    [
        (Context(), "no credentials"),
        (Context("pdb_nope"), "malformed API key"),
        (Context(""), "malformed API key"),
    ],
)
async def test_no_or_malformed_credentials_say_what_to_pass(context: Context, says: str) -> None:
    store = Store()
    with pytest.raises(Unauthenticated, match=says) as refused:
        await authenticator(store).principal(context)  # type: ignore[arg-type]
    assert "PAIRDB_API_KEY" in refused.value.message
    assert store.queries == 0


async def test_a_certificate_with_the_admin_unit_is_admin_others_are_no_credentials() -> None:
    auth = authenticator(Store())
    admin = await auth.principal(Context(cert=certificate("admin", "ops-laptop")))  # type: ignore[arg-type]
    assert admin == Principal("cert:ops-laptop", Role.ADMIN)
    with pytest.raises(Unauthenticated):
        await auth.principal(Context(cert=certificate("client")))  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated):
        await auth.principal(Context(cert=b"not a certificate"))  # type: ignore[arg-type]


async def test_insecure_makes_every_caller_an_anonymous_admin() -> None:
    auth = authenticator(Store(), insecure=True)
    assert await auth.principal(Context()) == ANONYMOUS_ADMIN  # type: ignore[arg-type]
