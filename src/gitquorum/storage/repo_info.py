"""RepositorySize and RepositoryInfo, read from the filesystem without running git.

Sizes come from a directory walk in a worker thread; the headers of
commit-graph, bitmap and multi-pack-index files are parsed directly because
those few bytes are all the response needs.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from gitquorum.gitaly import repository_pb2

Info = repository_pb2.RepositoryInfoResponse
# Loose objects untouched for this long count as stale, as in Gitaly.
STALE_AFTER = 14 * 24 * 3600
_FANOUT_DIR = re.compile(r"^[0-9a-f]{2}$")
_LOOSE_NAME = re.compile(r"^(?:[0-9a-f]{38}|[0-9a-f]{62})$")


def disk_usage_kib(path: Path) -> int:
    """What ``du -sk`` prints: allocated blocks of every entry, hard links counted once."""
    seen: set[tuple[int, int]] = set()
    blocks = 0

    def account(entry: Path) -> None:
        nonlocal blocks
        try:
            st = os.lstat(entry)
        except FileNotFoundError:
            return
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            if key in seen:
                return
            seen.add(key)
        blocks += st.st_blocks

    account(path)
    for current, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            account(Path(current) / name)
    return (blocks * 512 + 1023) // 1024


def apparent_size(path: Path) -> int:
    total = 0
    for current, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(current, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _chunk_ids(data: bytes, table_offset: int, count: int) -> set[bytes]:
    ids = set()
    for index in range(count):
        start = table_offset + index * 12
        chunk = data[start : start + 4]
        if len(chunk) == 4 and chunk != b"\x00" * 4:
            ids.add(chunk)
    return ids


def _read_head(path: Path, size: int = 4096) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


def _graph_chunks(path: Path) -> set[bytes] | None:
    data = _read_head(path)
    if len(data) < 8 or data[:4] != b"CGPH":
        return None
    return _chunk_ids(data, 8, data[6])


def commit_graph_info(objects: Path) -> Info.CommitGraphInfo:
    chain = objects / "info" / "commit-graphs" / "commit-graph-chain"
    graphs: list[Path] = []
    if chain.exists():
        names = chain.read_text(errors="replace").split()
        graphs = [objects / "info" / "commit-graphs" / f"graph-{name}.graph" for name in names]
    elif (objects / "info" / "commit-graph").exists():
        graphs = [objects / "info" / "commit-graph"]
    chunk_sets = [c for c in (_graph_chunks(g) for g in graphs) if c is not None]
    if not chunk_sets:
        return Info.CommitGraphInfo()
    return Info.CommitGraphInfo(
        commit_graph_chain_length=len(chunk_sets) if chain.exists() else 0,
        has_bloom_filters=all(b"BIDX" in c and b"BDAT" in c for c in chunk_sets),
        has_generation_data=all(b"GDA2" in c for c in chunk_sets),
        has_generation_data_overflow=any(b"GDO2" in c for c in chunk_sets),
    )


def bitmap_info(path: Path | None) -> Info.BitmapInfo:
    if path is None:
        return Info.BitmapInfo()
    data = _read_head(path, 8)
    if len(data) < 8 or data[:4] != b"BITM":
        return Info.BitmapInfo()
    version = int.from_bytes(data[4:6], "big")
    options = int.from_bytes(data[6:8], "big")
    return Info.BitmapInfo(
        has_hash_cache=bool(options & 0x4), has_lookup_table=bool(options & 0x10), version=version
    )


def multi_pack_index_info(pack_dir: Path) -> Info.MultiPackIndexInfo:
    data = _read_head(pack_dir / "multi-pack-index")
    if len(data) < 12 or data[:4] != b"MIDX":
        return Info.MultiPackIndexInfo()
    chunks = _chunk_ids(data, 12, data[6])
    has_rev = b"RIDX" in chunks or any(pack_dir.glob("multi-pack-index-*.rev"))
    return Info.MultiPackIndexInfo(
        packfile_count=int.from_bytes(data[8:12], "big"),
        version=data[4],
        has_large_offsets=b"LOFF" in chunks,
        has_bitmapped_packs=b"BTMP" in chunks,
        has_reverse_index=has_rev,
    )


@dataclass
class _ObjectCounts:
    info: Info.ObjectsInfo = field(default_factory=Info.ObjectsInfo)
    pack_bitmap: Path | None = None
    midx_bitmap: Path | None = None


def _objects_info(objects: Path, now: float) -> _ObjectCounts:
    counts = _ObjectCounts()
    info = counts.info
    if objects.is_dir():
        for entry in os.scandir(objects):
            if not (entry.is_dir(follow_symlinks=False) and _FANOUT_DIR.match(entry.name)):
                continue
            for loose in os.scandir(entry.path):
                try:
                    st = loose.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not _LOOSE_NAME.match(loose.name):
                    info.loose_objects_garbage_count += 1
                    continue
                info.loose_objects_count += 1
                info.size += st.st_size
                if now - st.st_mtime > STALE_AFTER:
                    info.stale_loose_objects_count += 1
                    info.stale_size += st.st_size
                else:
                    info.recent_size += st.st_size
    pack_dir = objects / "pack"
    names = set(os.listdir(pack_dir)) if pack_dir.is_dir() else set()
    for name in sorted(names):
        stem, _, suffix = name.rpartition(".")
        if suffix == "rev":
            info.reverse_index_count += 1
        elif suffix == "bitmap" and name.startswith("multi-pack-index-"):
            counts.midx_bitmap = pack_dir / name
        elif suffix == "bitmap":
            counts.pack_bitmap = pack_dir / name
        if suffix != "pack":
            continue
        size = _file_size(pack_dir / name)
        info.packfile_count += 1
        info.size += size
        if f"{stem}.keep" in names:
            info.keep_count += 1
            info.keep_size += size
        if f"{stem}.mtimes" in names:
            info.cruft_count += 1
            info.stale_size += size
        else:
            info.recent_size += size
    return counts


def _alternates(objects: Path) -> Info.AlternatesInfo:
    path = objects / "info" / "alternates"
    try:
        text = path.read_text(errors="replace")
        mtime = path.stat().st_mtime
    except OSError:
        return Info.AlternatesInfo()
    directories = [line for line in text.splitlines() if line and not line.startswith("#")]
    modified = Timestamp()
    modified.FromNanoseconds(int(mtime * 1e9))
    return Info.AlternatesInfo(object_directories=directories, last_modified=modified)


def _loose_refs(refs: Path) -> int:
    count = 0
    for _current, _dirs, files in os.walk(refs):
        count += sum(1 for name in files if not name.endswith(".lock"))
    return count


def repository_info(path: Path) -> repository_pb2.RepositoryInfoResponse:
    """Everything RepositoryInfo reports, from one pass over the repository directory."""
    objects = path / "objects"
    counts = _objects_info(objects, time.time())
    alternates = _alternates(objects)
    response = Info(
        size=apparent_size(path),
        references=Info.ReferencesInfo(
            loose_count=_loose_refs(path / "refs"),
            packed_size=_file_size(path / "packed-refs"),
            reference_backend=Info.ReferencesInfo.REFERENCE_BACKEND_FILES,
        ),
        objects=counts.info,
        commit_graph=commit_graph_info(objects),
        bitmap=bitmap_info(counts.pack_bitmap),
        multi_pack_index=multi_pack_index_info(objects / "pack"),
        multi_pack_index_bitmap=bitmap_info(counts.midx_bitmap),
        is_object_pool=False,
    )
    if alternates.object_directories:
        response.alternates.CopyFrom(alternates)
    return response
