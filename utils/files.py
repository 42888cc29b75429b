"""File plumbing shared by every layer: config paths, atomic writes and their temporary files.

An atomic write goes to a temporary file in the destination's folder, named
``.<file name>.<random>.tmp`` (the one pattern, :data:`TEMP_GLOB`), is flushed and fsynced and
then renamed over the destination: a crash (even ``kill -9``) leaves the old file or the new one,
never a truncated one, plus at most a temporary file, which the next run removes at its start
(:func:`remove_stale_temps`; a training run does so only once it holds its folder's lock). A
failed write removes its temporary file and raises :class:`WriteError`, whose message names the
destination and the reason (e.g. "No space left on device") in one line.

Standard library only: ``utils/`` (checkpoints) and ``data/`` (image outputs, list files) both
use it, and it imports neither.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable

TEMP_SUFFIX = ".tmp"
TEMP_GLOB = ".*" + TEMP_SUFFIX          # .<file name>.<random>.tmp
UTF8_BOM = b"\xef\xbb\xbf"
LOW_SPACE = 1 << 20                     # below this many free bytes a failed write is "disk full"
# the process's umask, read once (setting it is process-wide, so never from a writer thread):
# temporary files are created 0600, the renamed result gets the mode a plain open() would give
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class WriteError(OSError):
    """An atomic write failed (full disk, read-only folder, ...); the destination is unchanged."""


def resolve_path(path: str | Path) -> Path:
    """A path from the config or the command line: ``~`` expanded; a relative path stays
    relative to the working directory, where every entry point runs."""
    return Path(path).expanduser()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:                      # e.g. a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, fsync it and rename it over
    ``path``. Raises :class:`WriteError` (temporary file removed, ``path`` untouched) when the
    file cannot be written."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        reason = _write_failure(exc, path.parent)       # before the space is freed again
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if reason is None:
            raise
        error = WriteError(f"could not write {path}: {reason}")
        error.errno = getattr(exc, "errno", None)
        raise error from exc
    _fsync_dir(path.parent)
    return path


def _write_failure(exc: BaseException, folder: Path) -> str | None:
    """Why a write failed, in words, when it is the file system's fault; None otherwise (the
    exception is the caller's, e.g. an object that cannot be serialised). torch.save reports a
    full disk as a RuntimeError of its zip writer, hence the look at the free space."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, RuntimeError):
        try:
            if shutil.disk_usage(folder).free < LOW_SPACE:
                return "No space left on device"
        except OSError:
            pass
    return None


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    """``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def write_text_atomic(text: str, path: str | Path) -> Path:
    """UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(text.encode("utf-8"), path)


def remove_stale_temps(folder: str | Path, recursive: bool = True) -> int:
    """Delete the temporary files (:data:`TEMP_GLOB`) an interrupted write left below
    ``folder``; returns how many. Only call it when no other process writes there."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = folder.rglob(TEMP_GLOB) if recursive else folder.glob(TEMP_GLOB)
    stale = [p for p in found if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


class NotUtf8Error(ValueError):
    """Bytes of a text file that are not UTF-8, at 1-based ``line`` and ``column``."""

    def __init__(self, path: Path, line: int, column: int, byte: int):
        super().__init__(f"{path}, line {line}, column {column}: byte 0x{byte:02x} is not UTF-8")
        self.path, self.line, self.column, self.byte = path, line, column, byte


def read_utf8_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, ends LF, CRLF or CR (as Python's text mode reads them).
    A leading BOM is dropped (editors on Windows add one; it would otherwise become part of the
    first line); bytes that are not UTF-8 raise :class:`NotUtf8Error` with their position."""
    data = Path(path).read_bytes()
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        head = data[:exc.start].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        raise NotUtf8Error(Path(path), head.count(b"\n") + 1, len(head) - head.rfind(b"\n"),
                           data[exc.start]) from None
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
