"""ruff, mypy and the import contracts are clean; the package installs next to anything.

Generated protobuf code is excluded from ruff and mypy by pyproject.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_lint_is_clean() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout


def test_ruff_format_is_clean() -> None:
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout


def test_mypy_is_clean() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout


def test_the_layers_import_only_downwards() -> None:
    """The import-linter contracts in pyproject.toml (one line of layers, the client's, the kernel's)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_installs_only_pairdb_and_imports_next_to_proto_plus(tmp_path: Path) -> None:
    """proto-plus, which every google-cloud client needs, is imported as `proto`: pairdb must not take it."""
    wheels = tmp_path / "wheels"
    built = run("pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT))
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = wheels.glob("pairdb-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist() if not name.startswith("pairdb-")}
    assert top_level == {"pairdb"}
    site = tmp_path / "site"
    installed = run("pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel), "proto-plus")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    probe = (
        "import proto, pairdb, pairdb.client, pairdb.proto.coordinator_pb2; "
        "print(proto.__file__); print(pairdb.__file__); print(proto.Message)"
    )
    # Outside the repository, with only what was installed ahead of the environment's packages.
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    proto_file, pairdb_file, _ = result.stdout.splitlines()
    assert proto_file.startswith(str(site)) and pairdb_file.startswith(str(site))
