"""Compile proto/ into the package's protocol modules.

Run ``python -m gitquorum.protogen`` (or ``make proto``). The generated files
import each other as ``gitquorum.gitaly``/``gitquorum.v1`` so the whole
protocol lives under the one import root.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = Path(__file__).resolve().parent
# proto folder -> python package folder under src/gitquorum
PACKAGES = {"gitaly": "gitaly", "gitquorum/v1": "v1"}
_IMPORT_FIXES = [
    (re.compile(rb"^from gitaly import ", re.M), b"from gitquorum.gitaly import "),
    (re.compile(rb"^from gitquorum\.v1 import ", re.M), b"from gitquorum.v1 import "),
]


def generate(out_root: Path) -> list[Path]:
    """Generate every package into ``out_root/<python package>``; return the files."""
    from grpc_tools import protoc  # dev dependency, only needed here

    include = Path(protoc.__file__).resolve().parent / "_proto"
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for proto_sub, py_sub in PACKAGES.items():
            sources = sorted((PROTO_DIR / proto_sub).glob("*.proto"))
            if not sources:
                continue
            args = [
                "protoc",
                f"-I{PROTO_DIR}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                *[str(s) for s in sources],
            ]
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed for {proto_sub}")
            target = out_root / py_sub
            target.mkdir(parents=True, exist_ok=True)
            for produced in sorted((Path(tmp) / proto_sub).iterdir()):
                data = produced.read_bytes()
                for pattern, repl in _IMPORT_FIXES:
                    data = pattern.sub(repl, data)
                dest = target / produced.name
                dest.write_bytes(data)
                written.append(dest)
            (target / "__init__.py").write_text('"""Generated protocol modules."""\n')
            written.append(target / "__init__.py")
    return written


def main() -> None:
    for py_sub in PACKAGES.values():
        stale = PACKAGE_DIR / py_sub
        if stale.exists():
            shutil.rmtree(stale)
    files = generate(PACKAGE_DIR)
    from importlib.metadata import version

    # The generated modules refuse older runtimes at import: pyproject.toml's
    # grpcio and protobuf floors must be at least these (tests/unit/test_packaging.py).
    print(
        f"generated {len(files)} files with grpcio-tools {version('grpcio-tools')} "
        f"(protobuf {version('protobuf')}): the grpcio and protobuf floors must be at least "
        "the versions in their headers",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
