"""docker-compose.yml describes a cluster that would start: there is no Docker engine here, so it is read.

Every pairdb service's command must parse with the `pairdb` CLI, host ports must
not collide, storage nodes must keep their data on volumes, the dependencies
must start in a working order, and Prometheus must scrape every metrics port.
"""

from __future__ import annotations

import graphlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from pairdb.cli import build_parser

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


def test_host_ports_do_not_collide(compose: dict[str, Any]) -> None:
    host_ports = [str(p).split(":")[0] for s in compose["services"].values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), host_ports


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
