"""The committed protocol modules must be exactly what ``make proto`` generates."""

from __future__ import annotations

from pathlib import Path

from gitquorum import protogen


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    generated = protogen.generate(tmp_path)
    assert generated, "nothing was generated"
    stale = []
    for path in generated:
        relative = path.relative_to(tmp_path)
        committed = protogen.PACKAGE_DIR / relative
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(relative))
    # Files left behind from a removed .proto are stale too.
    for py_sub in protogen.PACKAGES.values():
        folder = protogen.PACKAGE_DIR / py_sub
        if folder.exists():
            for existing in folder.glob("*_pb2*.py*"):
                if not (tmp_path / py_sub / existing.name).exists():
                    stale.append(f"{py_sub}/{existing.name} (no longer generated)")
    assert stale == [], f"run `make proto`: stale {stale}"


def test_every_served_method_is_annotated() -> None:
    from gitquorum.storage.server import SERVICES
    from gitquorum.wire.registry import MethodRegistry, Op

    # Refuses to build when a served method has no op type.
    table = MethodRegistry.from_descriptors().methods
    served = {f"gitaly.{class_name}" for _, class_name, _ in SERVICES}
    unannotated = [
        name
        for name, info in table.items()
        if info.service in served
        and info.op is Op.INTERCEPTED
        and not name.startswith(("/gitaly.ServerService/",))
    ]
    assert unannotated == []
    assert table["/gitaly.SSHService/SSHReceivePack"].op is Op.MUTATOR
    assert table["/gitaly.SmartHTTPService/InfoRefsReceivePack"].op is Op.ACCESSOR
    assert table["/gitaly.RepositoryService/OptimizeRepository"].op is Op.MAINTENANCE
