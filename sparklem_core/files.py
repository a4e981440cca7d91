"""Reading files that anyone may have put in place.

Regular files only, of bounded size, no link followed unless asked.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

MAX_KEY_FILE_BYTES = 64 * 1024  # an RSA key PEM is a few KiB


class UnusableFile(ValueError):
    """A file that is not a readable regular file of bounded size; the text says why,
    written to follow the file's name ("is a FIFO, not a regular file")."""


def read_regular_file(
    path: Path, limit: int = MAX_KEY_FILE_BYTES, *, follow_links: bool = False
) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Never blocks on a FIFO or opens a device, and follows a symbolic link only with
    ``follow_links`` (for a path the operator names); :class:`UnusableFile` else.
    """
    try:
        st = os.stat(path) if follow_links else os.lstat(path)
    except OSError as exc:
        raise UnusableFile(f"cannot be read: {_strerror(exc)}") from None
    kind = _kind(st.st_mode)  # refuse specials before opening them at all
    if kind:
        raise UnusableFile(f"is {kind}, not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    flags |= 0 if follow_links else os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:  # a link since the lstat
            raise UnusableFile("is a symbolic link, not a regular file") from None
        raise UnusableFile(f"cannot be read: {_strerror(exc)}") from None
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind:
            raise UnusableFile(f"is {kind}, not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, limit + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise UnusableFile(f"is larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise UnusableFile(f"cannot be read: {_strerror(exc)}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    """What a non-regular file is ("" for a regular file)."""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a device or socket"


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def write_atomic(path: Path, data: bytes, mode: int, *, replace: bool = True) -> None:
    """Write through a temporary file and fsync; ``replace=False`` refuses an existing file
    (:class:`FileExistsError`): two writers cannot race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic create-if-absent: two enrollments cannot race
            except FileExistsError:
                raise FileExistsError(f"{path} already exists") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
