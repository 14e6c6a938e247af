"""How a filesystem call fails: an errno for the kernel, and a line for the log."""

from __future__ import annotations

import errno


class FsError(Exception):
    """A call that fails with `errno` (ENOENT, EIO, EROFS, …); the FUSE adapter passes it on."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(code, str(code)))
        self.errno = code


def not_found(message: str = "") -> FsError:
    return FsError(errno.ENOENT, message)


def io_error(message: str = "") -> FsError:
    return FsError(errno.EIO, message)
