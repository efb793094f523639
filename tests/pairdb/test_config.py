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


@pytest.fixture
def dsn_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairdb_dsn"
    path.write_text("postgresql://pairdb:from-a-file@db:5432/pairdb\n")
    path.chmod(0o600)
    return path


def test_a_secret_is_read_from_the_file_env_names(dsn_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAIRDB_POSTGRES_DSN", raising=False)
    monkeypatch.setenv("PAIRDB_POSTGRES_DSN_FILE", str(dsn_file))
    r = config.resolve(build_parser(), ["coordinator"])
    assert r.args.postgres_dsn == "postgresql://pairdb:from-a-file@db:5432/pairdb"  # newline stripped
    assert r.sources["postgres_dsn"] == "env PAIRDB_POSTGRES_DSN_FILE"
    text = config.show(build_parser(), ["coordinator"], None)
    assert "postgres_dsn = 'postgresql://pairdb:***@db:5432/pairdb'  # env PAIRDB_POSTGRES_DSN_FILE" in text
    assert "from-a-file" not in text
    # The value itself wins over its file at the same level, as a flag wins over env.
    monkeypatch.setenv("PAIRDB_POSTGRES_DSN", "postgresql://db/direct")
    assert config.resolve(build_parser(), ["coordinator"]).args.postgres_dsn == "postgresql://db/direct"


def test_a_secret_is_read_from_the_file_the_toml_names(
    dsn_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PAIRDB_POSTGRES_DSN", raising=False)
    monkeypatch.delenv("PAIRDB_POSTGRES_DSN_FILE", raising=False)
    toml = tmp_path / "secret.toml"
    toml.write_text(f'[worker]\npostgres_dsn_file = "{dsn_file}"\n')
    r = config.resolve(build_parser(), ["--config", str(toml), "worker"])
    assert r.args.postgres_dsn == "postgresql://pairdb:from-a-file@db:5432/pairdb"
    assert r.sources["postgres_dsn"] == "file [worker] postgres_dsn_file"


def test_an_unreadable_secret_file_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PAIRDB_POSTGRES_DSN", raising=False)
    missing = tmp_path / "no-such-secret"
    monkeypatch.setenv("PAIRDB_POSTGRES_DSN_FILE", str(missing))
    with pytest.raises(
        SystemExit, match=f"cannot read the secret file {missing} \\(env PAIRDB_POSTGRES_DSN_FILE\\)"
    ):
        config.resolve(build_parser(), ["coordinator"])


def test_a_secret_flag_works_but_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAIRDB_POSTGRES_DSN", raising=False)
    r = config.resolve(build_parser(), ["coordinator", "--postgres-dsn", "postgresql://u:pw@db/x"])
    assert r.args.postgres_dsn == "postgresql://u:pw@db/x"
    [warning] = r.secrets_on_command_line()
    assert "--postgres-dsn" in warning and "PAIRDB_POSTGRES_DSN_FILE" in warning and "pw" not in warning
    monkeypatch.setenv("PAIRDB_POSTGRES_DSN", "postgresql://u:pw@db/x")
    assert config.resolve(build_parser(), ["coordinator"]).secrets_on_command_line() == []


@pytest.mark.parametrize(
    "dsn", ["postgresql://u:p@ss/w@db/x", "postgresql://db/x?password=secret", "host=db password='se cret'"]
)
def test_config_show_masks_every_form_of_dsn(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAIRDB_POSTGRES_DSN", dsn)
    text = config.show(build_parser(), ["worker"], None)
    assert "***" in text and "ss/w" not in text and "secret" not in text and "se cret" not in text


def test_a_secret_no_flag_takes_comes_from_env_or_the_file_env_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAIRDB_TEMPORAL_API_KEY", raising=False)
    monkeypatch.delenv("PAIRDB_TEMPORAL_API_KEY_FILE", raising=False)
    assert config.secret_from_env("temporal_api_key") == ""
    (tmp_path / "key").write_text("from-file\n")
    monkeypatch.setenv("PAIRDB_TEMPORAL_API_KEY_FILE", str(tmp_path / "key"))
    assert config.secret_from_env("temporal_api_key") == "from-file"
    monkeypatch.setenv("PAIRDB_TEMPORAL_API_KEY", "from-env")
    assert config.secret_from_env("temporal_api_key") == "from-env"
    monkeypatch.delenv("PAIRDB_TEMPORAL_API_KEY")
    monkeypatch.setenv("PAIRDB_TEMPORAL_API_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(SystemExit, match="PAIRDB_TEMPORAL_API_KEY_FILE"):
        config.secret_from_env("temporal_api_key")
