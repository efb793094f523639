"""The access table: every RPC has a rule, and each role gets exactly what the rules say."""

from __future__ import annotations

from pairdb.coordinator import access
from pairdb.proto import coordinator_pb2 as pb
from pairdb.security.roles import Principal, Role

SERVICE = pb.DESCRIPTOR.services_by_name["CoordinatorService"]
ADMIN = Principal("k-admin", Role.ADMIN)
WRITER = Principal("k1", Role.READ_WRITE, "a")
READER = Principal("k1", Role.READ_ONLY, "a")


def method(name: str) -> str:
    return f"/{SERVICE.full_name}/{name}"


def test_every_rpc_of_the_service_has_a_rule_and_every_rule_an_rpc() -> None:
    assert SERVICE.full_name == access.SERVICE
    assert {m.name for m in SERVICE.methods} == set(access.RULES)


def test_an_rpc_without_a_rule_is_refused_even_to_admin() -> None:
    assert access.denial(ADMIN, method("DropEverything"), None) == (
        "DropEverything has no access rule, so it is refused to everyone"
    )


def test_only_data_calls_are_open_to_tenant_keys() -> None:
    data = {"WriteKeyValue", "DeleteKeyValue", "BatchWrite", "ReadKeyValue", "BatchRead", "GetTenant"}
    for m in SERVICE.methods:
        rule = access.RULES[m.name]
        assert (rule.need is not access.Need.ADMIN) == (m.name in data), m.name
        assert (rule.tenants is not None) == (m.name in data), m.name


def test_admin_may_make_every_call() -> None:
    for m in SERVICE.methods:
        request = getattr(pb, m.input_type.name)()
        assert access.denial(ADMIN, method(m.name), request) is None, m.name


def test_a_read_write_key_reads_and_writes_its_tenant_only() -> None:
    own = pb.WriteKeyValueRequest(tenant_id="a", key="k")
    assert access.denial(WRITER, method("WriteKeyValue"), own) is None
    assert access.denial(WRITER, method("ReadKeyValue"), pb.ReadKeyValueRequest(tenant_id="a")) is None
    assert access.denial(WRITER, method("GetTenant"), pb.GetTenantRequest(tenant_id="a")) is None
    assert (
        access.denial(WRITER, method("WriteKeyValue"), pb.WriteKeyValueRequest(tenant_id="b"))
        == "key k1 is for tenant a, not b"
    )


def test_a_read_only_key_reads_but_never_writes() -> None:
    assert access.denial(READER, method("ReadKeyValue"), pb.ReadKeyValueRequest(tenant_id="a")) is None
    assert (
        access.denial(READER, method("DeleteKeyValue"), pb.DeleteKeyValueRequest(tenant_id="a"))
        == "key k1 is read-only on tenant a: writes need a read-write key"
    )


def test_a_batch_needs_every_items_tenant() -> None:
    mixed = pb.BatchWriteRequest(
        items=[pb.BatchWriteItem(tenant_id="a", key="x"), pb.BatchWriteItem(tenant_id="b", key="y")]
    )
    assert access.denial(WRITER, method("BatchWrite"), mixed) == "key k1 is for tenant a, not b"
    reads = pb.BatchReadRequest(items=[pb.BatchReadItem(tenant_id="a", key="x")])
    assert access.denial(READER, method("BatchRead"), reads) is None
    assert access.denial(WRITER, method("BatchWrite"), pb.BatchWriteRequest()) is None  # nothing touched


def test_admin_calls_name_the_role_they_need() -> None:
    assert access.denial(WRITER, method("CreateTenant"), pb.CreateTenantRequest()) == (
        "CreateTenant needs the admin role; the caller is key k1 (read-write on tenant a)"
    )


def test_a_cluster_certificate_is_no_client() -> None:
    worker = Principal("cert:worker-1", Role.WORKER)
    refused = access.denial(worker, method("ReadKeyValue"), pb.ReadKeyValueRequest(tenant_id="a"))
    assert refused == "ReadKeyValue needs a key for the tenant; the caller is certificate worker-1 (worker)"
