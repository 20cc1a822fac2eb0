"""Atomic file writes, the one helper every output goes through: a temporary file beside the target,
then ``os.replace``, so a reader never sees half a file and a failed write leaves the old file as it was.
Files get the permission a plain ``open()`` gives under the process's umask (the OS applies it: the
temporary file is created with mode 0o666, never 0o600 as ``tempfile.mkstemp`` would)."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

__all__ = ["atomic_path", "atomic_write", "plain_mode"]


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], suffix: str = ".tmp") -> Iterator[Path]:
    """A new empty file beside ``path`` for a writer that needs a file name; it replaces ``path`` when the
    block ends without an error and is removed otherwise. The folder of ``path`` is created if missing.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('done', ['out.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: Union[str, Path], write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` (a binary file object), atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)


def plain_mode(path: Union[str, Path]) -> int:
    """The permission bits of ``path``: give them to a file another library created 0o600 beside it."""
    return os.stat(path).st_mode & 0o777
