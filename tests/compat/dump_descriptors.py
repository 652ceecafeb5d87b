"""Print, as JSON, the shape of every gitaly message and method in one module set.

Run in its own interpreter: two sets of modules that both define ``gitaly.*``
cannot share one descriptor pool.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys

from google.protobuf import descriptor_pool


def main(package: str) -> None:
    pkg = importlib.import_module(package)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{mod.name}")
    pool = descriptor_pool.Default()
    out: dict[str, dict] = {"messages": {}, "methods": {}}
    seen_files: set[str] = set()

    def walk(desc) -> None:  # type: ignore[no-untyped-def]
        fields = {}
        for f in desc.fields:
            type_name = ""
            if f.message_type is not None:
                type_name = f.message_type.full_name
            elif f.enum_type is not None:
                type_name = f.enum_type.full_name
            fields[f.name] = [f.number, f.type, f.is_repeated, type_name]
        out["messages"][desc.full_name] = fields
        for nested in desc.nested_types:
            walk(nested)

    for name in list(sys.modules):
        if not name.startswith(package + ".") or not name.endswith("_pb2"):
            continue
        fd = sys.modules[name].DESCRIPTOR
        if fd.name in seen_files:
            continue
        seen_files.add(fd.name)
        for m in fd.message_types_by_name.values():
            walk(m)
        for s in fd.services_by_name.values():
            for meth in s.methods:
                out["methods"][f"{s.full_name}/{meth.name}"] = [
                    meth.input_type.full_name,
                    meth.output_type.full_name,
                    meth.client_streaming,
                    meth.server_streaming,
                ]
    del pool
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
