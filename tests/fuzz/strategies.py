"""Hypothesis strategies for hostile client input: protobuf messages, paths, bytes.

``messages(descriptor)`` builds random but well-formed instances of any request
type from its descriptor, so every registered RPC is covered without a
hand-written strategy per message. Repository fields get the interesting
values: the virtual storage, empty names and traversal attempts.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf import message_factory
from hypothesis import strategies as st

FD = _descriptor.FieldDescriptor

# Spellings that try to leave a storage root: parent components, absolute
# paths, percent-encoded and overlong-UTF-8 separators and dots, Unicode
# look-alikes of '.' and '/', NUL and control bytes, the internal directory.
TRAVERSALS = (
    "..",
    "../..",
    "../../etc/passwd",
    "/etc/passwd",
    "//etc",
    "a/../../b",
    "a/./../../b",
    "./..",
    "a/..",
    "%2e%2e",
    "%2e%2e%2f%2e%2e",
    "..%2f..",
    "%252e%252e",
    "%c0%ae%c0%ae",
    "\u2025",  # two dot leader
    "\uff0e\uff0e",  # fullwidth full stops
    "\u2024\u2024",  # one dot leader
    "\uff0f",  # fullwidth solidus
    "\u2215",  # division slash
    "\u2044",  # fraction slash
    "..\u002f..",
    "a\x00b",
    "a\\..\\..\\b",
    "+gitquorum",
    "+gitquorum/tmp",
    "@cluster/../..",
    "",
    ".",
    "/",
    "a//b",
    "link",
    "link/x.git",
)

_SEGMENT = st.one_of(
    st.sampled_from(["..", ".", "", "a", "repo.git", "+gitquorum", "link", "%2e%2e", "\u2025"]),
    st.text(min_size=1, max_size=8),
)

_NAME = st.text(alphabet="abcxyz019_-", min_size=1, max_size=8)
valid_paths = st.lists(_NAME, min_size=1, max_size=4).map(lambda parts: "/".join(parts) + ".git")

relative_paths = st.one_of(
    valid_paths,
    valid_paths,
    st.sampled_from(TRAVERSALS),
    st.lists(_SEGMENT, min_size=1, max_size=6).map("/".join),
    st.builds(lambda p, s: p + s, st.sampled_from(["/", "../", "./", ""]), st.text(max_size=20)),
)

storage_names = st.one_of(
    st.sampled_from(["default", "", "node1", "..", "default\x00"]), st.text(max_size=10)
)

_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: FD) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return st.one_of(st.integers(low, high), st.sampled_from([0, 1, -1 if low < 0 else 2]))
    if kind == FD.TYPE_BOOL:
        return st.booleans()
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind == FD.TYPE_STRING:
        if field.name == "relative_path":
            return relative_paths
        if field.name == "storage_name":
            return storage_names
        return st.text(max_size=40)
    if kind == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FD.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(values), st.integers(-5, 50))
    raise AssertionError(f"unexpected field type {kind} of {field.full_name}")


def _field_value(field: FD, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return messages(field.message_type, depth + 1)
    return _scalar(field)


def _is_map(field: FD) -> bool:
    return bool(field.message_type is not None and field.message_type.GetOptions().map_entry)


def messages(descriptor: _descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Random, well-formed instances of the message type ``descriptor``."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if _is_map(field):
            key = _scalar(field.message_type.fields_by_name["key"])
            value = _field_value(field.message_type.fields_by_name["value"], depth)
            parts[field.name] = st.dictionaries(key, value, max_size=2)
        elif field.is_repeated:
            parts[field.name] = st.lists(_field_value(field, depth), max_size=3)
        else:
            parts[field.name] = st.one_of(st.none(), _field_value(field, depth))

    def build(values: dict[str, Any]) -> _message.Message:
        message = cls()
        for name, value in values.items():
            if value is None or value == [] or value == {}:
                continue
            field = descriptor.fields_by_name[name]
            target = getattr(message, name)
            if _is_map(field):
                for k, v in value.items():
                    if field.message_type.fields_by_name["value"].message_type is not None:
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif field.is_repeated:
                if field.message_type is not None:
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif field.message_type is not None:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=parts).map(build)


_ENDPOINTS = ["/info/refs", "/git-upload-pack", "/git-receive-pack", "", "/other"]


@st.composite
def url_paths(draw: st.DrawFn) -> str:
    relative = draw(relative_paths)
    style = draw(st.sampled_from(["raw", "quoted", "double", "mixed"]))
    if style == "quoted":
        relative = quote(relative, safe="")
    elif style == "double":
        relative = quote(quote(relative, safe=""), safe="")
    elif style == "mixed":
        relative = quote(relative, safe="/")
    return "/" + relative + draw(st.sampled_from(_ENDPOINTS))
