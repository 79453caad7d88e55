"""The one base class for user mistakes: the CLI prints its message and exits with code 2.

A file the machine cannot write or read (a full disk, a read-only folder, a path that is a file)
is not a bug either: :func:`describe_os_error` turns the ``OSError`` into the one line the CLI
prints, naming the file and what to do.

    >>> import errno
    >>> print(describe_os_error(OSError(errno.EROFS, "Read-only file system", "runs/a")))
    runs/a: Read-only file system: the file system is read-only: choose a writable --out
"""

from __future__ import annotations

import errno


class UserError(ValueError):
    """Bad input from a user (config, files, arguments). The message must name the fix."""


_FIXES = {
    errno.ENOSPC: "free disk space (or choose another --out) and run the command again",
    errno.EDQUOT: "free space within your disk quota (or choose another --out) and run again",
    errno.EROFS: "the file system is read-only: choose a writable --out",
    errno.EACCES: "no permission: choose a folder you can write (--out) or fix its permissions",
    errno.EPERM: "not permitted: choose a folder you can write (--out) or fix its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "the path is a folder where a file was expected: choose another path",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer workers",
}


def describe_os_error(e: OSError) -> str:
    """One line for an ``OSError``: the file, the system's reason, and the fix."""
    where = f"{e.filename}: " if e.filename else ""
    reason = e.strerror or str(e) or type(e).__name__
    fix = _FIXES.get(e.errno or -1, "check the path and the disk, then run the command again")
    return f"{where}{reason}: {fix}"
