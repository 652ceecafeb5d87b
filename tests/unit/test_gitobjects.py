"""Commit, trailer and tree parsing checked against the git CLI on real objects."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from gitquorum.errors import InvalidArgument
from gitquorum.gitaly import shared_pb2
from gitquorum.storage import gitobjects
from tests.harness.gitrepo import git, make_repo


def _hash_objects(repo: Path, kind: str, payloads: list[bytes], scratch: Path) -> list[str]:
    """Write many objects with one git process."""
    paths = []
    for index, payload in enumerate(payloads):
        path = scratch / f"obj{index}"
        path.write_bytes(payload)
        paths.append(str(path))
    out = git(
        "hash-object", "-w", "-t", kind, "--stdin-paths", cwd=repo, input="\n".join(paths).encode()
    )
    return out.split()


def _raw(repo: Path, oid: str) -> bytes:
    return subprocess.run(
        ["git", "cat-file", "commit", oid], cwd=repo, capture_output=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("gitobjects") / "repo", commits=3)


# --- revisions and names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("revision", "message"),
    [
        (b"", "empty revision"),
        (b"-main", "revision can't start with '-'"),
        (b"--all", "revision can't start with '-'"),
        (b"ma in", "revision can't contain whitespace"),
        (b"main\n", "revision can't contain whitespace"),
        (b"ma\tin", "revision can't contain whitespace"),
        (b"ma\x00in", "revision can't contain NUL"),
        (b"main:README", "revision can't contain ':'"),
        (b"ma\\in", "revision can't contain '\\'"),
    ],
)
def test_validate_revision_rejects_like_gitaly(revision: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        gitobjects.validate_revision(revision)
    assert err.value.message == message


@pytest.mark.parametrize(
    "revision", [b"main", b"HEAD~2", b"v1.0^{commit}", b"a" * 40, b"feature-x"]
)
def test_validate_revision_accepts(revision: bytes) -> None:
    gitobjects.validate_revision(revision)


def test_validate_revision_allows_empty_when_asked() -> None:
    gitobjects.validate_revision(b"", allow_empty=True)
    with pytest.raises(InvalidArgument):
        gitobjects.validate_revision(b"-x", allow_empty=True)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        (b"HEAD", True),
        (b"HEAD:src/file.txt", True),
        (b"HEAD:./x", False),
        (b"HEAD:../x", False),
        (b":../x", False),
        (b"@{u}", False),
        (b"main@{UPSTREAM}", False),
        (b"@{push}", False),
        (b"main@{1}", True),
        (b"a\nb", False),
        (b"a\x00b", False),
        (b"", False),
    ],
)
def test_safe_object_name(name: bytes, safe: bool) -> None:
    assert gitobjects.safe_object_name(name) is safe


def test_unsafe_names_really_kill_cat_file(repo: Path, tmp_path: Path) -> None:
    """The names refused above make git exit instead of answering (in a bare repository)."""
    bare = tmp_path / "bare.git"
    git("clone", "-q", "--bare", str(repo), str(bare))
    for name in (b"HEAD:./x", b"HEAD:../x", b"@{u}", b"@{push}"):
        proc = subprocess.run(
            ["git", "cat-file", "--batch-check"],
            cwd=bare,
            input=name + b"\nHEAD\n",
            capture_output=True,
        )
        assert proc.returncode != 0 and b"commit" not in proc.stdout


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b".", b""),
        (b"./", b""),
        (b"src", b"src"),
        (b"src/", b"src"),
        (b"src//", b"src"),
        (b"a/b/c", b"a/b/c"),
        (b"a//b", None),
        (b"a/../b", None),
        (b"./a", None),
        (b"/", None),
        (b"", None),
    ],
)
def test_normalize_path(path: bytes, expected: bytes | None) -> None:
    assert gitobjects.normalize_path(path) == expected


# --- authors and commits -------------------------------------------------------------------------


def test_parse_author_variants() -> None:
    author = gitobjects.parse_author(b"Jane Doe <jane@example.com> 1700000000 +0130")
    assert (author.name, author.email, author.date.seconds, author.timezone) == (
        b"Jane Doe",
        b"jane@example.com",
        1700000000,
        b"+0130",
    )
    no_email = gitobjects.parse_author(b"Only Name")
    assert no_email.name == b"Only Name" and not no_email.email and not no_email.HasField("date")
    unclosed = gitobjects.parse_author(b"N <broken")
    assert unclosed.name == b"N" and not unclosed.email
    bad_date = gitobjects.parse_author(b"N <e> notanumber +0000")
    assert bad_date.date.seconds == gitobjects.FALLBACK_SECONDS
    huge = gitobjects.parse_author(b"N <e> 99999999999999999999 +0000")
    assert huge.date.seconds == gitobjects.FALLBACK_SECONDS
    no_tz = gitobjects.parse_author(b"N <e> 5")
    assert no_tz.date.seconds == 5 and no_tz.timezone == b""


def test_parse_commit_matches_git(repo: Path) -> None:
    fmt = "%H%x00%T%x00%P%x00%an%x00%ae%x00%at%x00%cn%x00%ce%x00%ct%x00%s"
    for line in git("log", "--all", f"--format={fmt}", cwd=repo).splitlines():
        oid, tree, parents, an, ae, at, cn, ce, ct, subject = line.split("\x00")
        raw = _raw(repo, oid)
        commit = gitobjects.parse_commit(oid, raw)
        assert commit.id == oid and commit.tree_id == tree
        assert list(commit.parent_ids) == parents.split()
        assert (commit.author.name, commit.author.email) == (an.encode(), ae.encode())
        assert commit.author.date.seconds == int(at)
        assert (commit.committer.name, commit.committer.email) == (cn.encode(), ce.encode())
        assert commit.committer.date.seconds == int(ct)
        assert commit.author.timezone == b"+0100"
        assert commit.subject == subject.encode()
        message = raw.split(b"\n\n", 1)[1]
        assert commit.body == message and commit.body_size == len(message)
        assert commit.signature_type == shared_pb2.NONE


def _commit_object(headers: bytes, message: bytes) -> bytes:
    base = (
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
        b"author A <a@example.com> 1700000000 +0000\n"
        b"committer C <c@example.com> 1700000100 -0230\n"
    )
    return base + headers + b"\n" + message


@pytest.mark.parametrize(
    ("first_line", "expected"),
    [
        (b"-----BEGIN PGP SIGNATURE-----", shared_pb2.PGP),
        (b"-----BEGIN PGP MESSAGE-----", shared_pb2.PGP),
        (b"-----BEGIN SSH SIGNATURE-----", shared_pb2.SSH),
        (b"-----BEGIN SIGNED MESSAGE-----", shared_pb2.X509),
        (b"something else", shared_pb2.NONE),
    ],
)
def test_signature_type(first_line: bytes, expected: int) -> None:
    raw = _commit_object(b"gpgsig " + first_line + b"\n \n abc\n -----END-----\n", b"signed\n")
    commit = gitobjects.parse_commit("0" * 40, raw)
    assert commit.signature_type == expected
    # The signature's blank continuation line must not end the header early.
    assert commit.subject == b"signed" and commit.body == b"signed\n"


@pytest.mark.parametrize(
    "data",
    [
        b"tree " + b"1" * 40 + b"\nparent " + b"2" * 40 + b"\nauthor A <a@x> 1700000000 +0100\n"
        b"committer C <c@x> 1700000001 -0500\nencoding latin1\n\nsubject\n\nbody\n",
        b"tree " + b"1" * 40 + b"\nauthor \ncommitter broken\n\n",
        b"tree " + b"1" * 40 + b"\nauthor A <a@x> notanumber +0000\ngpgsig -----BEGIN PGP "
        b"SIGNATURE-----\n line\n\nmsg",
    ],
)
def test_parsing_into_a_field_gives_the_same_message(data: bytes) -> None:
    """FindLocalBranches parses each commit into its response in place."""
    alone = gitobjects.parse_commit("3" * 40, data, trailers=True)
    branch = shared_pb2.Branch(name=b"refs/heads/x")
    gitobjects.parse_commit("3" * 40, data, trailers=True, into=branch.target_commit)
    assert branch.target_commit.SerializeToString() == alone.SerializeToString()
    assert branch.target_commit == alone


def test_long_body_is_cut_but_sized() -> None:
    message = b"subject\n\n" + b"x" * 20000 + b"\n"
    commit = gitobjects.parse_commit("0" * 40, _commit_object(b"", message))
    assert commit.body_size == len(message)
    assert commit.body == message[: gitobjects.MAX_MESSAGE_SIZE]
    assert commit.subject == b"subject"


def test_commit_without_message_and_with_encoding() -> None:
    raw = _commit_object(b"", b"").rstrip(b"\n")
    commit = gitobjects.parse_commit("1" * 40, raw)
    assert commit.subject == b"" and commit.body == b"" and commit.body_size == 0
    assert commit.committer.timezone == b"-0230"
    encoded = gitobjects.parse_commit("1" * 40, _commit_object(b"encoding ISO-8859-1\n", b"s\r\n"))
    assert encoded.encoding == "ISO-8859-1" and encoded.subject == b"s"


def test_parse_tag(repo: Path) -> None:
    git("tag", "-a", "vtag", "-m", "tag message\n\nmore", cwd=repo)
    oid = git("rev-parse", "vtag", cwd=repo).strip()
    raw = subprocess.run(["git", "cat-file", "tag", oid], cwd=repo, capture_output=True).stdout
    tag = gitobjects.parse_tag(oid, raw)
    assert tag.object == git("rev-parse", "vtag^{commit}", cwd=repo).strip()
    assert tag.type == "commit" and tag.name == b"vtag"
    assert tag.tagger is not None and tag.tagger.email == b"cy@example.com"
    assert tag.message == b"tag message\n\nmore\n"


# --- trailers ------------------------------------------------------------------------------------

_TRAILER_CORPUS = [
    b"subject\n\nbody\n\nSigned-off-by: A <a@b>\nChange-Id: I123\n",
    b"subject\n\nKey: value\n continued\n  more\nOther: x\n",
    b"subject\n\nnot a trailer line\nKey: v\n",
    b"subject\n\nnot a trailer line\nSigned-off-by: v\nFoo: x\n",
    b"subject\n\nbody\n---\nKey: v\n",
    b"subject\n\nKey: v\n\n# comment\n",
    b"Key: v\n",
    b"subject\nKey: v\n",
    b"subject\n\nKey : spaced\nKey2:tight\n",
    b"subject\n\n(cherry picked from commit abc)\nplain line\nplain 2\nplain 3\n",
    b"s\n\nA: 1\nConflicts:\n\tfile\n",
    b"s\n\nA: 1\n# ------------------------ >8 ------------------------\nB: 2\n",
    b"s\n\nA: 1\r\nB: 2\r\n",
    b"s\n\nA:\nB: \n",
    b"s\n\nSee: http://example.com/a:b\nFixes: #12\n",
]

_LINE_POOL = [
    b"Key: value",
    b"Signed-off-by: Ada <ada@example.com>",
    b"(cherry picked from commit 0123456789)",
    b"Co-authored-by: B <b@x>",
    b" continuation",
    b"\tindented",
    b"",
    b"   ",
    b"# a comment",
    b"plain words here",
    b"foo bar: not a trailer",
    b"Key : spaced key",
    b"k-e-y:tight",
    b"---",
    b"Conflicts:",
    b"\tsome/path",
    b"URL: https://h/x?y=1:2",
    b"Trailing: space   ",
    b"x" * 30 + b": long",
    b"Empty:",
    b"# ------------------------ >8 ------------------------",
    b"\xc3\xa9t\xc3\xa9: accent",
]


def _random_messages(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    messages = []
    for _ in range(count):
        lines = [rng.choice([b"subject", b"Key: in subject", b"# c", b""])]
        for _ in range(rng.randint(0, 9)):
            lines.append(rng.choice(_LINE_POOL))
        ending = rng.choice([b"\n", b"", b"\n\n"])
        messages.append(b"\n".join(lines) + ending)
    return messages


def test_trailers_match_git(repo: Path, tmp_path: Path) -> None:
    """Our trailer block detection equals git's %(trailers:unfold) on 400+ messages."""
    header = (
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
        b"author A <a@example.com> 1700000000 +0000\n"
        b"committer A <a@example.com> 1700000000 +0000\n\n"
    )
    # Identical messages hash to one object, which git log would show once.
    messages = list(dict.fromkeys(_TRAILER_CORPUS + _random_messages(400, seed=20240102)))
    oids = _hash_objects(repo, "commit", [header + m for m in messages], tmp_path)
    out = subprocess.run(
        [
            "git",
            "log",
            "--no-walk=unsorted",
            "--format=%x01%(trailers:unfold,separator=%x00)%x02",
            *oids,
        ],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    expected = [chunk.split(b"\x02")[0] for chunk in out.split(b"\x01")[1:]]
    assert len(expected) == len(messages)
    for message, want in zip(messages, expected, strict=True):
        assert b"\x00".join(gitobjects.trailer_lines(message)) == want, message


def test_parse_trailers_like_gitaly() -> None:
    message = b"s\n\nbody\n\nKey: value\n folded\nSigned-off-by: A <a@b>\nEmpty:\n"
    trailers = gitobjects.parse_trailers(message)
    assert [(t.key, t.value) for t in trailers] == [
        (b"Key", b"value folded"),
        (b"Signed-off-by", b"A <a@b>"),
        (b"Empty", b""),
    ]
    many = b"s\n\n" + b"".join(b"K%d: v\n" % i for i in range(80))
    assert len(gitobjects.parse_trailers(many)) == gitobjects.MAX_TRAILERS
    long_value = b"s\n\nA: 1\nB: " + b"v" * 600 + b"\nC: 3\n"
    assert [t.key for t in gitobjects.parse_trailers(long_value)] == [b"A"]
    assert gitobjects.parse_trailers(b"just a subject\n") == []


# --- trees ---------------------------------------------------------------------------------------


def test_parse_tree_matches_ls_tree(repo: Path) -> None:
    tree = git("rev-parse", "HEAD^{tree}", cwd=repo).strip()
    raw = subprocess.run(["git", "cat-file", "tree", tree], cwd=repo, capture_output=True).stdout
    items = gitobjects.parse_tree(raw, b"pre")
    listing = git("ls-tree", tree, cwd=repo).splitlines()
    assert len(items) == len(listing)
    for item, line in zip(items, listing, strict=True):
        meta, name = line.split("\t")
        mode, kind, oid = meta.split()
        assert item.mode == int(mode, 8)
        assert item.kind == kind and item.oid == oid
        assert item.path == b"pre/" + name.encode() and item.name == name.encode()


def test_tree_item_kinds() -> None:
    assert gitobjects.TreeItem(0o040000, b"d", "0" * 40).kind == "tree"
    assert gitobjects.TreeItem(0o160000, b"m", "0" * 40).kind == "commit"
    assert gitobjects.TreeItem(0o100755, b"x", "0" * 40).kind == "blob"
    assert gitobjects.TreeItem(0o120000, b"l", "0" * 40).kind == "blob"
    with pytest.raises(ValueError):
        gitobjects.parse_tree(b"100644 name\x00short")
