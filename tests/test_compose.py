"""docker-compose.yml describes a cluster that would start: there is no Docker engine here, so it is read.

Every pairdb service's command must parse with the `pairdb` CLI, host ports must
not collide, storage nodes must keep their data on volumes, the dependencies
must start in a working order, and Prometheus must scrape every metrics port.
No password is in the file: they are Docker secrets, every port is published on
127.0.0.1 only, and pairdb and Temporal have their own PostgreSQL roles.
"""

from __future__ import annotations

import graphlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pairdb.cli import build_parser
from pairdb.security import api_keys
from pairdb.security.roles import Principal, Role
from pairdb.security.secrets import reveals_secret
from pairdb.security.tls import principal_of

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def pairdb_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("build") == "."}


def depends(service: dict[str, Any]) -> set[str]:
    deps = service.get("depends_on", [])
    return set(deps if isinstance(deps, list) else deps.keys())


def test_every_pairdb_command_exists_in_the_cli(compose: dict[str, Any]) -> None:
    services = pairdb_services(compose)
    assert {"storage-1", "storage-2", "storage-3", "coordinator-1", "coordinator-2", "worker"} <= set(
        services
    )
    parser = build_parser()
    for name, service in services.items():
        try:
            parser.parse_args(service["command"])
        except SystemExit as exc:
            pytest.fail(f"{name}: `pairdb {' '.join(service['command'])}` does not parse ({exc})")


def test_the_image_runs_the_pairdb_cli() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["pairdb"]' in dockerfile
    # pairdb/ and the folders its symlinks point to: the whole installed package.
    linked = {p.name for p in (ROOT / "pairdb").iterdir() if p.is_symlink()}
    assert linked == {"coordinator", "activities", "workflows", "proto"}
    for package in ("pairdb", *sorted(linked)):
        assert f"COPY {package} ./{package}" in dockerfile


def published(compose: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(service, host address, host port) of every published port."""
    found = []
    for name, service in compose["services"].items():
        for spec in service.get("ports", []):
            parts = str(spec).split(":")
            address = parts[0] if len(parts) == 3 else "0.0.0.0"  # docker's default: every interface
            found.append((name, address, parts[-2] if len(parts) > 1 else parts[0]))
    return found


def test_host_ports_do_not_collide(compose: dict[str, Any]) -> None:
    host_ports = [(address, port) for _, address, port in published(compose)]
    assert len(host_ports) == len(set(host_ports)), host_ports


def test_every_port_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    ports = published(compose)
    assert {name for name, _, _ in ports} >= {"coordinator-1", "coordinator-2", "temporal", "temporal-ui"}
    assert [p for p in ports if p[1] != "127.0.0.1"] == []


def _strings(node: Any) -> list[tuple[str, str]]:
    """(key, value) of every scalar in the file, key "" for list items."""
    if isinstance(node, dict):
        return [
            kv
            for k, v in node.items()
            for kv in ([(str(k), str(v))] if not isinstance(v, (dict, list)) else _strings(v))
        ]
    if isinstance(node, list):
        return [
            kv for v in node for kv in ([("", str(v))] if not isinstance(v, (dict, list)) else _strings(v))
        ]
    return []


def test_no_password_is_written_in_the_file(compose: dict[str, Any]) -> None:
    for key, value in _strings(compose):
        assert not reveals_secret(value), (key, value)
        if any(word in key.upper() for word in ("PASSWORD", "PWD", "DSN", "SECRET")):
            assert key.upper().endswith("_FILE") or key == "POSTGRES_INITDB_ARGS", (key, value)
            assert value.startswith("/run/secrets/") or key == "POSTGRES_INITDB_ARGS", (key, value)


def test_passwords_are_docker_secrets_each_service_mounts(compose: dict[str, Any]) -> None:
    declared = compose["secrets"]
    assert {
        "postgres_password",
        "pairdb_db_password",
        "pairdb_postgres_dsn",
        "temporal_db_password",
        "admin_api_key",
        "ca_crt",
    } <= set(declared)
    assert all(s["file"].startswith("./secrets/") for s in declared.values())
    services = compose["services"]
    text = (ROOT / "docker-compose.yml").read_text() + (
        ROOT / "deploy" / "postgres-init" / "10-roles.sql"
    ).read_text()
    for name, service in services.items():
        # A service reading /run/secrets/X must be given secret X.
        used = {
            value.split("/run/secrets/")[1].split()[0].strip("`'\")")
            for _, value in _strings(service)
            if "/run/secrets/" in value
        }
        assert used <= set(service.get("secrets", [])), name
    assert "/run/secrets/pairdb_db_password" in text and "/run/secrets/temporal_db_password" in text
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert {"pairdb_db_password", "temporal_db_password"} <= set(services["postgres"]["secrets"])
    for name in ("coordinator-1", "coordinator-2", "worker", "init"):
        assert services[name]["environment"]["PAIRDB_POSTGRES_DSN_FILE"] == "/run/secrets/pairdb_postgres_dsn"
        assert "pairdb_postgres_dsn" in services[name]["secrets"]
    # Processes that never talk to PostgreSQL do not get its password.
    for name in ("storage-1", "storage-2", "storage-3", "temporal-ui", "prometheus"):
        assert "pairdb_postgres_dsn" not in services[name].get("secrets", []), name
    # A private key goes to its holder alone.
    for name, service in services.items():
        keys = {secret for secret in service.get("secrets", []) if secret.endswith("_key")}
        assert keys <= {f"{name.replace('-', '_')}_key", "admin_api_key"}, name
    assert services["temporal"]["secrets"] == ["temporal_db_password"]


def test_pairdb_and_temporal_have_their_own_postgres_roles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
    sql = (ROOT / "deploy" / "postgres-init" / "10-roles.sql").read_text()
    for statement in (
        "CREATE ROLE pairdb LOGIN PASSWORD :'pairdb_password'",
        "CREATE DATABASE pairdb OWNER pairdb",
        "CREATE ROLE temporal LOGIN PASSWORD :'temporal_password'",
        "CREATE DATABASE temporal OWNER temporal",
        "CREATE DATABASE temporal_visibility OWNER temporal",
        "REVOKE ALL ON DATABASE pairdb FROM PUBLIC",
    ):
        assert statement in sql
    statements = [line for line in sql.splitlines() if not line.startswith("--")]
    assert not any("SUPERUSER" in line.upper() or "CREATEROLE" in line.upper() for line in statements)
    assert services["temporal"]["environment"]["POSTGRES_USER"] == "temporal"
    assert services["temporal"]["environment"]["SKIP_DB_CREATE"] == "true"
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "postgres"


def test_the_temporal_ui_cannot_change_workflows(compose: dict[str, Any]) -> None:
    # docs.temporal.io/references/web-ui-environment-variables
    assert compose["services"]["temporal-ui"]["environment"]["TEMPORAL_DISABLE_WRITE_ACTIONS"] == "true"


def test_every_hop_runs_tls_and_nothing_runs_insecure(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for name, service in pairdb_services(compose).items():
        args = parser.parse_args(service["command"])
        assert not getattr(args, "insecure", False), name
        assert args.tls_ca == Path("/run/secrets/ca_crt"), name
        if args.command in ("storage-node", "coordinator", "worker"):
            secret = name.replace("-", "_")
            assert (args.tls_cert, args.tls_key) == (
                Path(f"/run/secrets/{secret}_crt"),
                Path(f"/run/secrets/{secret}_key"),
            ), name
    declared = compose["secrets"]
    for name in ("storage-1", "storage-2", "storage-3", "coordinator-1", "coordinator-2", "worker"):
        secret = name.replace("-", "_")
        assert declared[f"{secret}_crt"]["file"] == f"./secrets/certs/{name}.crt"
        assert declared[f"{secret}_key"]["file"] == f"./secrets/certs/{name}.key"


def make_secrets(target: Path) -> None:
    subprocess.run(
        ["sh", str(ROOT / "deploy" / "make-secrets.sh"), str(target)],
        check=True,
        capture_output=True,
        env={**os.environ, "PAIRDB": f"{sys.executable} -m pairdb.cli"},
    )


def test_make_secrets_writes_private_consistent_files(tmp_path: Path, compose: dict[str, Any]) -> None:
    target = tmp_path / "secrets"
    make_secrets(target)
    files = {p.name: p for p in target.iterdir() if p.is_file()}
    assert set(files) == {
        "postgres_password",
        "pairdb_db_password",
        "pairdb_postgres_dsn",
        "temporal_db_password",
        "admin_api_key",
    }
    api_keys.parse(files["admin_api_key"].read_text())  # the format pairdb's own keys have
    # Every certificate the compose file names, issued for its service by one CA.
    certs_dir = target / "certs"
    for secret in compose["secrets"].values():
        if "/certs/" in secret["file"]:
            assert (tmp_path / secret["file"]).is_file(), secret
    node = principal_of((certs_dir / "storage-2.crt").read_bytes())
    assert node == Principal("storage-2", Role.STORAGE_NODE)
    assert principal_of((certs_dir / "worker.crt").read_bytes()) == Principal("worker", Role.WORKER)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in certs_dir.iterdir())
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files.values())
    password = files["pairdb_db_password"].read_text().strip()
    assert len(password) >= 32 and password != files["temporal_db_password"].read_text().strip()
    assert (
        files["pairdb_postgres_dsn"].read_text() == f"postgresql://pairdb:{password}@postgres:5432/pairdb\n"
    )
    before = {name: p.read_text() for name, p in files.items()}
    ca = (certs_dir / "ca.crt").read_bytes()
    make_secrets(target)
    assert {name: p.read_text() for name, p in files.items()} == before  # kept: the database uses them
    assert (certs_dir / "ca.crt").read_bytes() == ca


def test_storage_nodes_keep_their_data_on_named_volumes(compose: dict[str, Any]) -> None:
    for name, service in pairdb_services(compose).items():
        command = service["command"]
        if command[0] != "storage-node":
            continue
        data_dir = command[command.index("--data-dir") + 1]
        volume, _, target = service["volumes"][0].partition(":")
        assert target == data_dir, name
        assert volume in compose["volumes"], f"{name}: {volume} is not a named volume"


def test_dependencies_start_in_a_working_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    graph = {name: depends(s) for name, s in services.items()}
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises on a cycle
    before = {name: i for i, name in enumerate(order)}
    for name in ("coordinator-1", "coordinator-2", "worker"):
        assert {"postgres", "temporal-setup"} <= depends(services[name])
    assert before["postgres"] < before["temporal"] < before["temporal-setup"] < before["coordinator-1"]
    assert before["coordinator-1"] < before["init"]
    assert all(before[f"storage-{i}"] < before["coordinator-1"] for i in (1, 2, 3))
    assert services["postgres"]["healthcheck"]


def test_prometheus_scrapes_every_metrics_port(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for name, service in pairdb_services(compose).items():
        command = service["command"]
        for flag in ("--metrics-port", "--sdk-metrics-port"):
            if flag in command:
                assert f"{name}:{command[command.index(flag) + 1]}" in targets, (name, flag)
    mounted = compose["services"]["prometheus"]["volumes"][0].split(":")[0]
    assert (ROOT / mounted).resolve() == (ROOT / "deploy" / "prometheus.yml").resolve()
