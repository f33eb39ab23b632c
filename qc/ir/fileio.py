"""Atomic output files: write to a temporary file beside the target, then rename.

On Linux the temporary file is anonymous (``O_TMPFILE``): it has no name until the write has
finished, so a process killed mid-write (even by SIGKILL) leaves nothing behind. Elsewhere it
is a ``.qc-*.tmp`` file, removed on any exception (Ctrl-C included) but not after SIGKILL.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import tempfile
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file in the target's directory; rename it over ``path`` on success."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd = _anonymous_file(directory)
    if fd is not None:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            _link_as(f.fileno(), directory, path)
        return
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".qc-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _anonymous_file(directory: str) -> int | None:
    """An unnamed file in ``directory`` that can be linked in later, or None where the OS or the
    file system does not allow it (then the caller uses a named temporary file)."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not _can_link_anonymous(os.stat(directory).st_dev, directory):
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY, 0o666)
    except OSError:
        return None


@functools.cache
def _can_link_anonymous(device: int, directory: str) -> bool:
    """Whether an O_TMPFILE file can be given a name on this file system (probed once)."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError:
        return False
    try:
        probe = _fresh_link(fd, directory)
        os.unlink(probe)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _fresh_link(fd: int, directory: str) -> str:
    """Link the anonymous file ``fd`` under a new ``.qc-*.tmp`` name in ``directory``; the name."""
    for _ in range(100):
        tmp = os.path.join(directory, f".qc-{os.getpid()}-{os.urandom(4).hex()}.tmp")
        try:
            _linkat(fd, tmp)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def _linkat(fd: int, path: str) -> None:
    """linkat(fd, "", path, AT_EMPTY_PATH), else through /proc/self/fd (kernels differ in which works)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), path)
    os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)


_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000


def _link_as(fd: int, directory: str, path: str) -> None:
    """Give the anonymous file ``fd`` the name ``path``: link it under a fresh temporary name,
    then rename that over ``path`` (a link cannot replace an existing file)."""
    tmp = _fresh_link(fd, directory)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
