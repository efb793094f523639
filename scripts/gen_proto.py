"""Regenerate the Python stubs in proto/ from proto/*.proto.

Run `python scripts/gen_proto.py` after editing a .proto file;
tests/proto/test_stubs_fresh.py fails while the committed stubs are stale.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every .proto into out_dir."""
    sources = sorted(PROTO_DIR.glob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # The sources as pairdb/proto/*.proto, so generated imports read `from pairdb.proto import ...`:
        # the package users import (proto/ is mapped to pairdb.proto when installed).
        virtual = Path(tmp) / "src" / "pairdb" / "proto"
        virtual.mkdir(parents=True)
        for source in sources:
            shutil.copy(source, virtual / source.name)
        generated = Path(tmp) / "out"
        generated.mkdir()
        args = [
            "grpc_tools.protoc",
            f"-I{Path(tmp) / 'src'}",
            f"--python_out={generated}",
            f"--pyi_out={generated}",
            f"--grpc_python_out={generated}",
            *(f"pairdb/proto/{s.name}" for s in sources),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for path in sorted((generated / "pairdb" / "proto").glob("*_pb2*.py*")):
            shutil.copy(path, out_dir / path.name)
            written.append(out_dir / path.name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_DIR, help="output folder (default: proto/)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main()
