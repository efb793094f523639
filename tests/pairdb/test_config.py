"""Configuration precedence: flags, then environment, then the TOML file, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from pairdb import config
from pairdb.cli import build_parser


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "pairdb.toml"
    path.write_text(
        'log_level = "WARNING"\n'
        "[coordinator]\nport = 6000\nmetrics_port = 9100\nstorage_timeout = 1.5\n"
        'postgres_dsn = "postgresql://u:secret@db/pairdb"\n'
        '[client]\ncoordinator = "10.0.0.1:50051"\nconsistency = "ONE"\n'
    )
    return path


def test_flags_beat_env_beat_file_beat_defaults(toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAIRDB_METRICS_PORT", "9200")
    monkeypatch.setenv("PAIRDB_STORAGE_TIMEOUT", "3")
    r = config.resolve(build_parser(), ["--config", str(toml), "coordinator", "--storage-timeout", "4"])
    a = r.args
    assert (a.storage_timeout, r.sources["storage_timeout"]) == (4.0, "flag")
    assert (a.metrics_port, r.sources["metrics_port"]) == (9200, "env PAIRDB_METRICS_PORT")
    assert (a.port, r.sources["port"]) == (6000, "file [coordinator]")
    assert (a.log_level, r.sources["log_level"]) == ("WARNING", "file (top level)")
    assert (a.host, r.sources["host"]) == ("127.0.0.1", "default")


def test_client_commands_read_the_client_table(toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAIRDB_COORDINATOR", raising=False)
    r = config.resolve(build_parser(), ["--config", str(toml), "get", "t", "k"])
    assert (r.args.coordinator, r.args.consistency) == ("10.0.0.1:50051", "ONE")
    monkeypatch.setenv("PAIRDB_CONFIG", str(toml))
    monkeypatch.setenv("PAIRDB_COORDINATOR", "127.0.0.1:1")
    assert config.resolve(build_parser(), ["get", "t", "k"]).args.coordinator == "127.0.0.1:1"


def test_config_show_names_each_source_and_hides_passwords(toml: Path) -> None:
    text = config.show(build_parser(), ["coordinator", "--port", "7000"], toml)
    assert "port = 7000  # flag" in text
    assert "metrics_port = 9100  # file [coordinator]" in text
    assert "secret" not in text and "postgresql://u:***@db/pairdb" in text


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="does not exist"):
        config.resolve(build_parser(), ["--config", str(tmp_path / "nope.toml"), "nodes"])
