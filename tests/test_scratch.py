"""``pythia.scratch``: a folder is locked while its owner lives, removed on exit, and swept once
its owner is dead (SIGKILL included); nothing else is ever removed, and a sweeper racing with
creations or with other sweepers never removes a live folder."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import deque
from pathlib import Path

import pytest

from pythia import scratch
from pythia.scratch import CONTENT_NAME, LOCK_NAME, ScratchDir, Swept, scratch_dir, sweep

ROOT = Path(__file__).resolve().parent.parent

# makes a scratch folder with NBYTES of data under PARENT, prints its root, then holds it
# ("hold"), dies by SIGKILL ("die"), or forks a child that outlives it ("fork": the child's
# pid first); with COUNT > 1 makes that many folders
_OWNER = textwrap.dedent("""
    import os, signal, sys, time
    from pythia.scratch import ScratchDir
    parent, prefix, nbytes, mode, count = sys.argv[1:6]
    folders = [ScratchDir(prefix, parent) for _ in range(int(count))]
    for folder in folders:
        with open(os.path.join(folder.path, "data.bin"), "wb") as f:
            f.write(b"x" * int(nbytes))
    if mode == "fork":
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
    for folder in folders:
        print(folder.root, flush=True)
    if mode == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
""")

# sweeps PARENT in a tight loop for SECONDS; prints the folders and bytes it removed, and loops
_SWEEPER = textwrap.dedent("""
    import sys, time
    from pythia.scratch import sweep
    parent, seconds = sys.argv[1], float(sys.argv[2])
    print("ready", flush=True)
    end, folders, nbytes, loops = time.monotonic() + seconds, 0, 0, 0
    while time.monotonic() < end:
        swept = sweep(parent)
        folders, nbytes, loops = folders + swept.folders, nbytes + swept.bytes, loops + 1
    print(folders, nbytes, loops, flush=True)
""")


def _env() -> dict:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def _python(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise AssertionError(f"helper process said nothing: {proc.stderr.read()}")
    return line


def _sweeper_result(proc: subprocess.Popen) -> tuple[int, int, int]:
    """A ``_SWEEPER``'s (folders, bytes removed, sweeps done): its last line (its sweeps may
    print theirs before)."""
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    folders, nbytes, loops = out.strip().splitlines()[-1].split()
    return int(folders), int(nbytes), int(loops)


def leave_dead_scratch(parent: str, prefix: str = "pythia-evaluate-", nbytes: int = 1000,
                       count: int = 1) -> list[str]:
    """Scratch folders under ``parent`` whose owner process was SIGKILLed (what a killed task
    leaves behind); returns their roots."""
    proc = _python(_OWNER, parent, prefix, nbytes, "die", count)
    paths = [_line(proc) for _ in range(count)]
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert all(os.path.isfile(os.path.join(p, LOCK_NAME)) for p in paths)
    return paths


def is_locked(path: str) -> bool:
    """Whether someone holds the lock of the scratch folder that ``path`` is (its root) or is
    in (its content folder): a lock attempt of our own fails."""
    lock = os.path.join(path, LOCK_NAME)
    if not os.path.exists(lock):
        lock = os.path.join(os.path.dirname(path), LOCK_NAME)
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _sweep_until_removed(parent: str, seconds: float = 10.0) -> Swept:
    end = time.monotonic() + seconds  # a killed process releases its files a moment later
    while True:
        swept = sweep(parent)
        if swept.folders or time.monotonic() > end:
            return swept
        time.sleep(0.02)


# ---------------------------------------------------------------- the owner's side

def test_the_folder_is_locked_in_use_and_goes_on_normal_exit(tmp_path):
    with scratch_dir("pythia-test-", str(tmp_path)) as path:
        root = os.path.dirname(path)  # the folder swept as a unit: the lock file and ours
        assert os.path.dirname(root) == str(tmp_path)
        assert os.path.basename(root).startswith("pythia-test-")
        assert os.listdir(path) == [] and os.path.basename(path) == CONTENT_NAME
        assert sorted(os.listdir(root)) == sorted([LOCK_NAME, CONTENT_NAME])
        assert is_locked(path)
        os.makedirs(os.path.join(path, "rows", "a"))
        Path(path, "rows", "a", "bucket-0.arrow").write_bytes(b"x" * 100)
    assert not os.path.exists(root)
    assert list(tmp_path.iterdir()) == []


def test_the_folder_goes_on_an_exception(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with scratch_dir("pythia-test-", str(tmp_path)) as path:
            Path(path, "data").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not os.path.exists(os.path.dirname(path))
    assert list(tmp_path.iterdir()) == []


def test_a_kept_scratch_dir_goes_on_close_once(tmp_path):
    folder = ScratchDir("pythia-previous-", str(tmp_path))
    Path(folder.path, "rows").mkdir()
    assert not folder.closed and is_locked(folder.path)
    folder.close()
    folder.close()  # a second close does nothing
    assert folder.closed and list(tmp_path.iterdir()) == []
    with ScratchDir("pythia-previous-", str(tmp_path)) as kept:
        assert os.path.isdir(kept.path)
    assert kept.closed and list(tmp_path.iterdir()) == []


def test_the_default_parent_is_the_temp_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches $TMPDIR
    with scratch_dir("pythia-test-") as path:
        assert os.path.dirname(os.path.dirname(path)) == str(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prefix", ["evaluate-", "", "pythia-a/b-"])
def test_a_prefix_sweep_would_not_recognise_is_refused(tmp_path, prefix):
    with pytest.raises(ValueError, match="scratch prefix"):
        ScratchDir(prefix, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_locked_before_a_sweeper_can_see_it(tmp_path, monkeypatch):
    # a sweep run at the worst moment (the lock file exists, its lock not yet taken) must not
    # see the folder: it is still hidden. Made visible first, this sweep would remove it.
    real, seen = fcntl.flock, []

    def flock(fd, op):
        if not seen:
            seen.append(None)
            seen[0] = sweep(str(tmp_path))
        return real(fd, op)

    monkeypatch.setattr(scratch.fcntl, "flock", flock)
    folder = ScratchDir("pythia-test-", str(tmp_path), sweep_first=False)
    monkeypatch.setattr(scratch.fcntl, "flock", real)
    assert seen == [Swept()]
    assert os.path.isfile(os.path.join(folder.root, LOCK_NAME)) and is_locked(folder.root)
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(folder.root)]
    folder.close()


# ---------------------------------------------------------------- the sweeper's side

def test_a_live_owners_folder_stays_and_a_killed_ones_is_swept(tmp_path):
    owner = _python(_OWNER, tmp_path, "pythia-evaluate-", 12345, "hold", 1)
    try:
        path = _line(owner)
        assert sweep(str(tmp_path)) == Swept()
        assert os.path.getsize(os.path.join(path, CONTENT_NAME, "data.bin")) == 12345
    finally:
        owner.kill()  # SIGKILL: no cleanup runs
        owner.wait()
    assert os.path.isdir(path)
    assert _sweep_until_removed(str(tmp_path)) == Swept(1, 12345)
    assert list(tmp_path.iterdir()) == []


def test_a_forked_child_keeps_the_folder_after_its_parent_dies(tmp_path):
    # the child inherits the locked descriptor: the folder is still in use while it lives
    owner = _python(_OWNER, tmp_path, "pythia-evaluate-", 10, "fork", 1)
    child = int(_line(owner))
    try:
        path = _line(owner)
        owner.kill()
        owner.wait()
        assert sweep(str(tmp_path)) == Swept() and os.path.isdir(path)
    finally:
        owner.kill()  # nothing when it is dead already
        owner.wait()
        os.kill(child, signal.SIGKILL)
    assert _sweep_until_removed(str(tmp_path)) == Swept(1, 10)
    assert not os.path.exists(path)


def test_folders_not_made_here_are_never_removed(tmp_path):
    plain = tmp_path / "pythia-evaluate-x"  # the name, but no lock file
    (plain / "rows").mkdir(parents=True)
    (plain / "rows" / "bucket-0.arrow").write_bytes(b"x" * 100)
    other = tmp_path / "evaluate-y"  # a lock file, but not a pythia-* folder
    other.mkdir()
    (other / LOCK_NAME).write_bytes(b"")
    hidden = tmp_path / ".pythia-evaluate-z"  # hidden: being made
    hidden.mkdir()
    (hidden / LOCK_NAME).write_bytes(b"")
    odd = tmp_path / "pythia-odd"  # its "lock file" is a folder
    (odd / LOCK_NAME).mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / LOCK_NAME).write_bytes(b"")
    (elsewhere / "precious").write_bytes(b"keep me")
    (tmp_path / "pythia-link").symlink_to(elsewhere)  # a link to a lockable folder
    linked = tmp_path / "pythia-linked-lock"  # its lock file is a link
    linked.mkdir()
    (linked / LOCK_NAME).symlink_to(elsewhere / LOCK_NAME)
    (tmp_path / "pythia-predictions-abc").write_bytes(b"x")  # a file
    before = _tree(tmp_path)
    dead = leave_dead_scratch(str(tmp_path), nbytes=321)  # the one folder to remove
    assert sweep(str(tmp_path)) == Swept(1, 321)
    assert not os.path.exists(dead[0])
    assert _tree(tmp_path) == before


def test_a_sweep_of_a_missing_or_empty_parent_frees_nothing(tmp_path):
    assert sweep(str(tmp_path / "missing")) == Swept()
    assert sweep(str(tmp_path)) == Swept()


def test_making_a_folder_sweeps_the_dead_first(tmp_path, capsys):
    dead = leave_dead_scratch(str(tmp_path), "pythia-splits-", 2048, count=3)
    with scratch_dir("pythia-labels-", str(tmp_path)) as path:
        assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(os.path.dirname(path))]
    assert not any(os.path.exists(p) for p in dead)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "removed 3 folder(s), 6.1 kB" in out and str(tmp_path) in out


def test_racing_sweepers_remove_each_dead_folder_once(tmp_path):
    leave_dead_scratch(str(tmp_path), "pythia-evaluate-", 1000, count=40)
    sweepers = [_python(_SWEEPER, tmp_path, 1.0) for _ in range(2)]
    for s in sweepers:
        assert _line(s) == "ready"
    mine = sweep(str(tmp_path))
    theirs = [_sweeper_result(s) for s in sweepers]
    assert mine.folders + sum(f for f, _, _ in theirs) == 40
    assert mine.bytes + sum(b for _, b, _ in theirs) == 40_000
    assert list(tmp_path.iterdir()) == []


def test_sweepers_in_a_tight_loop_never_remove_a_live_folder(tmp_path):
    # two processes sweep without pause while this one makes (and sweeps: every ScratchDir
    # sweeps first), fills and closes folders, eight alive at a time
    sweepers = [_python(_SWEEPER, tmp_path, 2.0) for _ in range(2)]
    for s in sweepers:
        assert _line(s) == "ready"
    live: deque = deque()
    made, end = 0, time.monotonic() + 1.5
    while time.monotonic() < end:
        folder = ScratchDir("pythia-stress-", str(tmp_path))
        Path(folder.path, "data").write_bytes(b"x" * 10)
        live.append(folder)
        made += 1
        if len(live) > 8:
            old = live.popleft()
            assert Path(old.path, "data").read_bytes() == b"x" * 10, "a live folder was swept"
            old.close()
    for folder in live:
        assert Path(folder.path, "data").is_file(), "a live folder was swept"
        folder.close()
    results = [_sweeper_result(s) for s in sweepers]
    assert made > 100
    assert all(folders == 0 for folders, _, _ in results), results  # they removed nothing
    assert all(loops > 100 for _, _, loops in results), results  # and did sweep, often
    assert list(tmp_path.iterdir()) == []
