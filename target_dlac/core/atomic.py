"""Atomic file output: write to a temporary file in the same directory, then rename.

An interrupted or failed write never leaves a half-written output behind, and never
clobbers the previous file: the data goes to a hidden ``.tmp-*`` file next to the output,
is flushed and fsync'ed, optionally checked by ``verify`` (which reads the temporary file
back), and only then renamed over the output.  On any failure (including Ctrl-C) the
temporary file is removed and the output path is untouched.

A write that the system refuses (read-only location, no space, the path is a directory,
a parent is missing and cannot be created) raises :class:`OutputError`, a
:class:`~target_dlac.core.errors.DlacError` naming the output path: the CLI prints it as one line.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

from target_dlac.core.errors import DlacError


class OutputError(DlacError):
    """An output file cannot be written (the message names the path and the reason)."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes,
                       verify: Callable[[str], None] | None = None) -> None:
    """Write ``data`` to ``path`` atomically.  ``verify(tmp_path)``, if given, runs on the
    complete, fsync'ed temporary file before the rename; if it raises, nothing is written
    (the temporary file is removed) and its exception propagates."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        if os.path.isdir(path):
            raise IsADirectoryError(21, "Is a directory", path)
        # the suffix only helps a human recognise the file; keep the name within NAME_MAX
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path)[-64:], dir=directory)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _mode_for(path))    # mkstemp makes 0600; give the file its usual mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(directory)
    except OSError as e:
        raise OutputError(f"cannot write {path!r}: {e.strerror or e}") from e
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _fsync_dir(directory: str) -> None:
    """Make the rename durable (best effort: some file systems refuse to fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mode_for(path: str) -> int:
    """The existing file's permissions, else what ``open()`` would give (0666 minus umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except (FileNotFoundError, NotADirectoryError):
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
