"""The committed protobuf stubs are exactly what scripts/gen_proto.py generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_the_proto_sources(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    generated = sorted(p.name for p in tmp_path.glob("*_pb2*"))
    committed = sorted(p.name for p in (ROOT / "proto").glob("*_pb2*"))
    assert generated == committed
    stale = [
        name for name in generated if (tmp_path / name).read_bytes() != (ROOT / "proto" / name).read_bytes()
    ]
    assert not stale, f"stale stubs {stale}: run python scripts/gen_proto.py"
