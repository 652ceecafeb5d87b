"""Map a smart-HTTP request path to (repository relative path, endpoint).

``/group/project.git/info/refs`` names the repository ``group/project.git``
on the gateway's virtual storage: the leading ``/`` goes, a ``.git`` suffix
stays as given. The path is percent-decoded once and then checked here, even
though the proxy validates relative paths too: a traversal must be refused
with a 400 at the edge, not passed along to be refused somewhere else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

# Longer paths are not repositories anyone created through gitquorum.
MAX_PATH = 4096


class Endpoint(enum.Enum):
    INFO_REFS = "/info/refs"
    UPLOAD_PACK = "/git-upload-pack"
    RECEIVE_PACK = "/git-receive-pack"


class InvalidPath(ValueError):
    """The path names no acceptable repository (HTTP 400)."""


class UnknownEndpoint(ValueError):
    """Not one of the smart-HTTP endpoints (HTTP 404)."""


@dataclass(frozen=True)
class Target:
    relative_path: str
    endpoint: Endpoint


def parse(raw_path: str) -> Target:
    """Parse the raw (still percent-encoded) path of a request, without its query."""
    if len(raw_path) > MAX_PATH:
        raise InvalidPath("path too long")
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPath("path is not valid UTF-8") from None
    for endpoint in Endpoint:
        if path.endswith(endpoint.value):
            relative = path[: -len(endpoint.value)]
            break
    else:
        raise UnknownEndpoint(f"not a smart-HTTP endpoint: {path!r}")
    return Target(validate(relative), endpoint)


def validate(path: str) -> str:
    """The relative path of a URL's repository part, or InvalidPath."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise InvalidPath("path contains control characters")
    if not path.startswith("/"):
        raise InvalidPath("path must start with '/'")
    relative = path[1:]
    if not relative:
        raise InvalidPath("no repository in path")
    if relative.startswith("/"):
        raise InvalidPath("repository path must be relative")
    for segment in relative.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidPath(f"invalid path segment {segment!r}")
    return relative
