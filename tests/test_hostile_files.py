"""Issue 15: what anyone who can write the store's directory can put there.

Files named like ours that we did not make are never deleted, read or written; a
FIFO or a symlink to ``/dev/zero`` cannot hang or exhaust a command; a symlinked
store path is refused unless it points to an existing store; every directory we
create is private whatever the umask.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from local_store import StoreCorruptError, StoreWriter, open_store
from local_store._journal import HEADER, journal_files
from otel_delivery.cli import main
from tests import rawdb

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process: a hang fails the test instead of blocking it."""
    return subprocess.run(
        [sys.executable, "-m", "otel_delivery", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "d.db"
    open_store(path, create=True).close()
    return path


def test_files_named_like_journals_but_not_ours_are_left_alone(store: Path) -> None:
    contents = b'["attempts:end",{"delivery_id":"mine"}]\n'
    others = [
        Path(f"{store}-journal-backup"),                      # an operator's copy
        Path(f"{store}-journal-1234-abcdef01.bak"),           # not the exact name
        Path(f"{store}-journal-1234-ABCDEF01"),               # not the exact name
        Path(f"{store}-journal-1234-abcdef01"),               # exact name, no header
    ]
    for path in others:
        path.write_bytes(contents)
    for command in (["summary"], ["failures"], ["health"], ["interrupted"],
                    ["prune", "--older-than", "1d", "--keep-failed-for", "2d"]):
        CliRunner().invoke(main, [*command, "--store", str(store)])
    for path in others:
        assert path.read_bytes() == contents
    with rawdb.connect(store) as conn:
        assert conn.execute("SELECT COUNT(*) FROM attempts").fetchone() == (0,)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_like_a_journal_hangs_nothing(store: Path) -> None:
    fifo = Path(f"{store}-journal-77-0123abcd")
    os.mkfifo(fifo)
    result = cli("summary", "--store", store, timeout=20)
    assert result.returncode == 0, result.stderr
    code = textwrap.dedent(
        """
        import sys, otel_delivery
        h = otel_delivery.configure(service_name="x", store=sys.argv[1])
        h.shutdown()
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True,
                          text=True, timeout=20, cwd=REPO)
    assert done.stdout.strip() == "ok", done.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # and left where it was


def test_a_journal_symlinked_to_dev_zero_is_not_read(store: Path) -> None:
    link = Path(f"{store}-journal-77-0123abcd")
    link.symlink_to("/dev/zero")
    result = cli("summary", "--store", store, timeout=20)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert journal_files(store) == []


def test_an_oversized_journal_is_read_only_up_to_its_bound(store: Path) -> None:
    from local_store._replay import MAX_JOURNAL_BYTES

    big = Path(f"{store}-journal-77-0123abcd")
    with big.open("wb") as f:
        f.write(HEADER)
        f.truncate(MAX_JOURNAL_BYTES * 4)  # sparse: zeros, no newline
    result = cli("upgrade", "--store", store, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not big.exists()  # ours (the header says so): read up to the bound, then gone
    with rawdb.connect(store) as conn:
        (n,) = conn.execute(
            "SELECT count FROM drops WHERE reason = 'bad_journal_line'").fetchone()
    assert n >= 1


def test_a_dangling_symlink_at_the_store_path_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "victim.db"
    target.parent.mkdir()
    link = tmp_path / "d.db"
    link.symlink_to(target)
    with pytest.raises(StoreCorruptError, match="symlink"):
        open_store(link, create=True)
    assert not target.exists()
    w = StoreWriter(link)  # a gateway: never raises, never writes the target either
    w.start_attempt({"delivery_id": "d", "trace_id": "t", "span_id": "s",
                     "started_at_ms": 1})
    w.close()
    assert not target.exists()
    result = cli("summary", "--store", link)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error:")


def test_a_symlink_to_an_existing_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    for contents in (b"", b"precious notes\n"):
        victim = tmp_path / f"notes-{len(contents)}.txt"
        victim.write_bytes(contents)
        victim.chmod(0o644)
        link = tmp_path / f"d-{len(contents)}.db"
        link.symlink_to(victim)
        with pytest.raises(StoreCorruptError):
            open_store(link, create=True)
        w = StoreWriter(link)
        w.start_attempt({"delivery_id": "d", "trace_id": "t", "span_id": "s",
                         "started_at_ms": 1})
        w.close()
        assert victim.read_bytes() == contents
        assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_a_symlink_to_an_empty_sqlite_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "theirs.db"
    rawdb.connect(other).execute("VACUUM")  # a valid SQLite file with no tables
    other.chmod(0o644)
    before = other.read_bytes()
    link = tmp_path / "d.db"
    link.symlink_to(other)
    with pytest.raises(StoreCorruptError, match="no otel-delivery schema"):
        open_store(link, create=True)
    assert other.read_bytes() == before
    assert stat.S_IMODE(other.stat().st_mode) == 0o644


def test_a_symlink_to_an_existing_store_is_followed(store: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.db"
    link.symlink_to(store)
    w = StoreWriter(link)
    assert w.start_attempt({"delivery_id": "d", "trace_id": "t", "span_id": "s",
                            "started_at_ms": 1}) == 1
    assert w.close()
    with rawdb.connect(store) as conn:
        assert conn.execute("SELECT delivery_id FROM attempts").fetchall() == [("d",)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_at_the_store_path_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "d.db"
    os.mkfifo(fifo)
    result = cli("summary", "--store", fifo, timeout=20)
    assert result.returncode == 1
    assert result.stderr.startswith("Error:") and "regular file" in result.stderr


def test_an_empty_file_becomes_a_private_store(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    path.write_bytes(b"")
    path.chmod(0o644)
    open_store(path, create=True).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


UMASK_CHILD = textwrap.dedent(
    """
    import os, sys
    os.umask(0)
    from local_store import StoreWriter
    w = StoreWriter(sys.argv[1])
    w.start_attempt({"delivery_id": "d", "trace_id": "t", "span_id": "s",
                     "started_at_ms": 1})
    w.close()
    """
)


def test_every_directory_created_is_private_under_umask_000(tmp_path: Path) -> None:
    base = tmp_path / "home"
    base.mkdir()
    store = base / ".local" / "state" / "otel-delivery" / "deliveries.db"
    subprocess.run([sys.executable, "-c", UMASK_CHILD, str(store)], check=True, timeout=60,
                   cwd=REPO)
    for d in (base / ".local", base / ".local" / "state", store.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE(base.stat().st_mode) != 0o700  # not ours: left as it was
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert not [p for p in store.parent.iterdir()
                if stat.S_IMODE(p.stat().st_mode) & 0o077]
