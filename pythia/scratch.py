"""Scratch folders on local disk that a killed task cannot leak for good.

A process killed by SIGKILL (the OOM killer, ``kill -9``, a lost container) runs no cleanup,
so its scratch folder stays in the temp directory and the retry starts with less disk. Each
folder made here holds an exclusive ``flock`` on a lock file inside it for as long as it is
in use; the kernel drops the lock when the last descriptor of it closes, which a process's
death does, however it dies. ``sweep`` removes every such folder whose lock it can take (its
owner is gone) and never one whose owner lives. Every ``ScratchDir`` sweeps its parent first.

Layout: ``<dir>/pythia-<what>-<random>/`` (the folder swept as a unit, ``ScratchDir.root``)
holds the lock file ``LOCK_NAME`` and ``CONTENT_NAME/``, the empty folder handed to the caller
(``ScratchDir.path``): what a caller uploads or lists whole never includes the lock file.

Invariants:

* A folder appears under its final name already locked: it is made under a hidden name
  (``.pythia-…``, which ``sweep`` never lists), its lock file created and locked there, then
  renamed into place. A sweeper therefore never sees a live folder unlocked. (A process
  killed within those few system calls leaves a hidden, empty folder that nothing sweeps.)
* ``sweep`` only considers ``pythia-*`` folders of this user that hold a regular lock file,
  and removes one only while holding its lock, after checking that the lock file it locked is
  still the one in the folder (so a folder removed and replaced meanwhile is left alone).
* Removal (by the owner or a sweeper) takes the contents first and the lock file last: a
  process killed midway leaves a folder the next sweep still recognises.

Forked children (``evaluate.forked``'s workers) inherit the locked descriptor, and a flock
belongs to the open file description, not to the process: while any child lives the folder
stays locked, even if the parent died. That is wanted — the child still reads the folder —
so children keep the descriptor, and nothing here ever unlocks explicitly (``LOCK_UN`` in a
child would release the parent's lock too); a child's copy of a ``ScratchDir`` never removes
the folder. The descriptor is close-on-exec: a program started with ``exec`` (a Spark JVM)
does not hold it. Linux and macOS only (``fcntl``); the parent should be a local disk (flock
over NFS is emulated, if at all).
"""
from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import stat
import tempfile
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

SCRATCH_PREFIX = "pythia-"  # every scratch folder's name starts with it; sweep looks at these
LOCK_NAME = ".pythia-scratch.lock"  # the lock file that marks a folder as made here
CONTENT_NAME = "data"  # the caller's folder, beside the lock file
_HIDDEN = "."  # prefix of a folder being made (not yet locked in the sweeper's eyes)
_RENAME_TRIES = 100


@dataclass(frozen=True)
class Swept:
    """What a ``sweep`` removed: folders of dead owners and their bytes (file sizes)."""

    folders: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        size = f"{self.bytes} B"
        for power, unit in enumerate(("kB", "MB", "GB", "TB"), start=1):
            if self.bytes >= 1000 ** power:
                size = f"{self.bytes / 1000 ** power:.1f} {unit}"
        return f"{self.folders} folder(s), {size}"


class ScratchDir:
    """A fresh, empty scratch folder ``path`` (in ``root`` = ``<dir>/<prefix><random>``, beside
    the lock file), locked while this object lives.

    Made at construction (after a ``sweep`` of ``dir``); ``close()`` (or leaving ``with``, or
    the object being collected, or the interpreter exiting) removes ``root``. Keep the object
    while the folder is in use (on an object when it outlives a block: ``previous.py``), else
    use ``scratch_dir``.

    Args:
        prefix: start of the folder's name; must start with ``SCRATCH_PREFIX``.
        dir: parent folder (default ``tempfile.gettempdir()``: ``$TMPDIR`` or /tmp).
        sweep_first: sweep ``dir`` of dead owners' folders before making this one.
    """

    def __init__(self, prefix: str, dir: str | None = None, *, sweep_first: bool = True):
        if not prefix.startswith(SCRATCH_PREFIX) or os.sep in prefix:
            raise ValueError(f"a scratch prefix starts with {SCRATCH_PREFIX!r} and names no "
                             f"subfolder, got {prefix!r}")
        parent = os.path.abspath(dir or tempfile.gettempdir())
        if sweep_first:
            sweep(parent)
        self.root, fd = _make_locked(parent, prefix)
        self.path = os.path.join(self.root, CONTENT_NAME)
        self._finalizer = weakref.finalize(self, _release, self.root, fd, os.getpid())

    def close(self) -> None:
        """Remove the folder (once; later calls do nothing)."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> "ScratchDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ScratchDir({self.root!r}{', closed' if self.closed else ''})"


@contextmanager
def scratch_dir(prefix: str, dir: str | None = None) -> Iterator[str]:
    """``with scratch_dir("pythia-evaluate-") as path:`` a ``ScratchDir``'s (empty) path, the
    folder removed when the block ends, normally or by an exception."""
    folder = ScratchDir(prefix, dir)
    try:
        yield folder.path
    finally:
        folder.close()


def sweep(dir: str | None = None) -> Swept:
    """Remove the scratch folders under ``dir`` (default the temp folder) whose owner process
    is dead, i.e. whose lock can be taken; prints one line when it removed any.

    Only ``pythia-*`` folders of this user holding a ``LOCK_NAME`` file are looked at; a
    folder whose owner (or a forked child of it) is alive stays. Safe against concurrent
    sweepers and owners: a folder that vanishes or is being removed is skipped. Costs one
    directory listing plus an open and a lock attempt per scratch folder present.
    """
    parent = os.path.abspath(dir or tempfile.gettempdir())
    folders = freed = 0
    try:
        with os.scandir(parent) as entries:
            candidates = [e.path for e in entries
                          if e.name.startswith(SCRATCH_PREFIX) and _is_own_dir(e)]
    except OSError:  # no such folder, no permission: nothing to sweep
        return Swept()
    for path in candidates:
        n = _reclaim(path)
        if n is not None:
            folders, freed = folders + 1, freed + n
    swept = Swept(folders, freed)
    if folders:
        print(f"scratch: removed {swept} left under {parent} by dead tasks")
    return swept


# ------------------------------------------------------------------------------ internals

def _is_own_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False) and \
            entry.stat(follow_symlinks=False).st_uid == os.getuid()
    except OSError:  # vanished
        return False


def _make_locked(parent: str, prefix: str) -> tuple[str, int]:
    """Make ``<parent>/<prefix><random>`` holding a locked ``LOCK_NAME`` and an empty
    ``CONTENT_NAME``; returns (its path, the lock's descriptor). The folder is made and locked
    under a hidden name, then renamed."""
    hidden = tempfile.mkdtemp(prefix=_HIDDEN + prefix, dir=parent)
    fd = -1
    try:
        fd = os.open(os.path.join(hidden, LOCK_NAME),
                     os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        os.mkdir(os.path.join(hidden, CONTENT_NAME), 0o700)
        return _publish(hidden, parent, prefix), fd
    except BaseException:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(hidden, ignore_errors=True)
        raise


def _publish(hidden: str, parent: str, prefix: str) -> str:
    """Rename the hidden folder to a free visible name; returns it. A live scratch folder is
    never empty (its lock file), so rename(2) cannot replace one: it fails and we draw again."""
    name = os.path.basename(hidden)[len(_HIDDEN):]
    for _ in range(_RENAME_TRIES):
        final = os.path.join(parent, name)
        if not os.path.lexists(final):
            try:
                os.rename(hidden, final)
                return final
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR,
                                     errno.ENOTDIR):
                    raise
        name = prefix + secrets.token_hex(4)
    raise FileExistsError(errno.EEXIST, f"no free scratch folder name for {prefix!r} under "
                          f"{parent}")


def _release(root: str, fd: int, owner_pid: int) -> None:
    """The owner's cleanup: remove the folder (lock file last), then drop the descriptor.
    In a forked child only the child's copy of the descriptor is closed."""
    try:
        if os.getpid() == owner_pid:
            _remove(root)
    finally:
        os.close(fd)


def _reclaim(path: str) -> int | None:
    """Remove ``path`` when its lock can be taken; returns the bytes freed, None if left."""
    lock = os.path.join(path, LOCK_NAME)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # no lock file (not made here, or being removed) or not ours
        return None
    try:
        mine = os.fstat(fd)
        if not stat.S_ISREG(mine.st_mode) or mine.st_uid != os.getuid():
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: the owner (or a child of it, or another sweeper) is alive
            return None
        try:  # still the folder's lock file? (removed, or removed and replaced, meanwhile)
            now = os.lstat(lock)
        except OSError:
            return None
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            return None
        size = tree_bytes(path)
        _remove(path)
        return size - tree_bytes(path)
    finally:
        os.close(fd)  # only now may anyone else lock it (the file is gone by then)


def _remove(path: str) -> None:
    """Everything in ``path`` but the lock file, then (when that all went) the lock file and
    the folder: a folder that cannot be emptied keeps its lock file, so a later sweep retries.
    """
    try:
        with os.scandir(path) as entries:
            for e in list(entries):
                if e.name == LOCK_NAME:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    try:
                        os.unlink(e.path)
                    except OSError:  # gone already, or not ours to remove: go on
                        pass
        if any(name != LOCK_NAME for name in os.listdir(path)):
            return
        os.unlink(os.path.join(path, LOCK_NAME))
        os.rmdir(path)
    except OSError:  # vanished, or not removable: nothing more to do here
        pass


def tree_bytes(path: str) -> int:
    """The sizes of the files under ``path`` (0 when it is gone)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
