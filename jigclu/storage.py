"""Local paths and storage URIs behind one interface (``pyarrow.fs``).

Everything jigclu reads or writes (datasets, run directories, sweeps, exports, reports) may
live on the local disk, behind ``file://``, or in object storage (``s3://``, ``gs://``;
S3-compatible stores through ``AWS_ENDPOINT_URL`` or ``?endpoint_override=host:port&scheme=http``).
pyarrow speaks all of them, so every module resolves its locations here instead of asking
"is this path local?" itself.

Writes are atomic everywhere: on a local disk a temporary file in the same directory is
fsynced and renamed into place; on an object store the object is uploaded whole and only then
becomes visible (a PUT or a completed multipart upload), so a reader never sees half a file.

Object stores go away for a while (an endpoint restarting, a dropped connection, throttling):
every call to one retries such transient errors with backoff for up to
``JIGCLU_STORAGE_RETRY_S`` seconds (default 120), with one warning line, before it fails with
one :class:`StorageError` line.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from jigclu.errors import ConfigError, warn

RETRY_ENV = "JIGCLU_STORAGE_RETRY_S"
# what the AWS/GCS clients say when the endpoint is unreachable or overloaded (not: a missing
# object, a denied request, a full disk)
_TRANSIENT = re.compile(r"NETWORK_CONNECTION|curlCode|couldn't connect|connection refused|connection reset|"
                        r"timed out|timeout|SERVICE_UNAVAILABLE|slow ?down|\b503\b|INTERNAL_FAILURE|broken pipe", re.I)
T = TypeVar("T")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
SCHEMES = ("file", "s3", "gs", "gcs")  # what jigclu reads and writes


class StorageError(ConfigError):
    """A storage location cannot be opened, read or written (a user's setting to fix)."""


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` carries a scheme (``s3://...``, ``file:///...``)."""
    return bool(_SCHEME.match(str(location)))


def check_syntax(location: str, key: str = "storage") -> None:
    """A location jigclu can write: a path or a URI of a known scheme naming a bucket (checked
    offline, before anything starts)."""
    match = _SCHEME.match(location)
    if match is None:
        return
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in SCHEMES:
        raise ConfigError(f"{key} {location}: unknown scheme '{scheme}://' (use a local path, file://, s3:// or gs://)")
    if scheme != "file" and not rest.split("?", 1)[0].strip("/"):
        raise ConfigError(f"{key} {location}: no bucket named")


def is_local(location: str | Path) -> bool:
    """A plain path or a ``file://`` URI: on this machine's disk."""
    text = str(location)
    return not is_uri(text) or text.startswith("file://")


def local_path(location: str | Path) -> Path | None:
    """The local path behind ``location`` (None for an object-store URI)."""
    if not is_local(location):
        return None
    text = str(location)
    if text.startswith("file://"):
        text = "/" + text[len("file://"):].lstrip("/")
    return Path(os.path.abspath(os.path.expanduser(text)))


def normalise(location: str | Path) -> str:
    """An absolute local path, or the URI as given without a trailing slash."""
    local = local_path(location)
    return str(local) if local is not None else str(location).rstrip("/")


def join(location: str | Path, *parts: str) -> str:
    """``location/part/...`` for a path or a URI (query options stay at the end)."""
    base = normalise(location)
    if not parts:
        return base
    tail = "/".join(p.strip("/") for p in parts if p)
    if "?" in base and is_uri(base):
        head, query = base.split("?", 1)
        return f"{head.rstrip('/')}/{tail}?{query}"
    return f"{base.rstrip('/')}/{tail}"


def parent(location: str | Path) -> str:
    """The directory holding ``location`` (query options of a URI kept)."""
    base = normalise(location)
    head, sep, query = base.partition("?") if is_uri(base) else (base, "", "")
    return head.rstrip("/").rsplit("/", 1)[0] + (f"?{query}" if sep else "")


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI; a bad URI is one :class:`StorageError`."""
    local = local_path(location)
    if local is not None:
        return pafs.LocalFileSystem(), str(local)
    try:
        return pafs.FileSystem.from_uri(str(location))
    except (OSError, ValueError, pa.ArrowException) as exc:
        # an unknown scheme, a pyarrow built without S3/GCS, a malformed URI
        raise StorageError(f"storage {location}: {_first_line(exc)}") from None


def retrying(location: str | Path, what: str, call: Callable[[], T]) -> T:
    """``call()``; on an object store, transient errors are retried with backoff (module doc)."""
    if is_local(location):
        return call()
    budget = float(os.environ.get(RETRY_ENV, "120"))
    deadline, delay, warned = time.monotonic() + budget, 0.5, False
    while True:
        try:
            return call()
        except (OSError, pa.ArrowException) as exc:
            if isinstance(exc, FileNotFoundError) or not _TRANSIENT.search(str(exc)) or \
                    time.monotonic() + delay > deadline:
                raise
            if not warned:
                warn(f"storage unreachable ({what} {location}: {_first_line(exc)}); retrying for up to {budget:.0f} s")
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def _info(location: str | Path) -> pafs.FileInfo:
    fs, path = resolve(location)
    try:
        return retrying(location, "look up", lambda: fs.get_file_info(path))
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot look up {location}: {_first_line(exc)}") from None


def display(fs: pafs.FileSystem, path: str) -> str:
    """A location as the user would write it (scheme included for remote filesystems)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    scheme = {"gcs": "gs"}.get(fs.type_name, fs.type_name)
    return f"{scheme}://{path}"


def exists(location: str | Path) -> bool:
    return _info(location).type != pafs.FileType.NotFound


def is_file(location: str | Path) -> bool:
    return _info(location).type == pafs.FileType.File


def is_dir(location: str | Path) -> bool:
    """A directory (on an object store: a prefix that holds objects)."""
    return _info(location).type == pafs.FileType.Directory


def mtime(location: str | Path) -> float | None:
    """When ``location`` was last written (unix seconds); None when it does not exist."""
    info = _info(location)
    return None if info.type == pafs.FileType.NotFound or info.mtime_ns is None else info.mtime_ns / 1e9


def read_bytes(location: str | Path) -> bytes:
    fs, path = resolve(location)

    def read() -> bytes:
        with fs.open_input_stream(path) as fh:
            return fh.read()

    try:
        return retrying(location, "read", read)
    except FileNotFoundError:
        raise StorageError(f"not found: {location}") from None
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read {location}: {_first_line(exc)}") from None


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode()


def write_atomic(location: str | Path, data: bytes | str) -> str:
    """Write ``data`` to ``location`` so no reader ever sees a partial file; returns the location."""
    payload = data.encode() if isinstance(data, str) else data
    local = local_path(location)
    if local is not None:
        _write_local(local, payload)
        return str(local)
    fs, path = resolve(location)

    def upload() -> None:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as fh:  # visible only once the upload completes
            fh.write(payload)

    try:
        retrying(location, "write", upload)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot write {location}: {_first_line(exc)}") from None
    return str(location)


def write_atomic_with(location: str | Path, write, suffix: str = "") -> str:
    """Atomically write what ``write(local_file_path)`` produces (for writers that want a file:
    ``torch.save``, ``pq.write_table``, ``fig.savefig``); ``suffix`` keeps the file type visible."""
    local = local_path(location)
    directory = local.parent if local is not None else None
    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write {location}: {exc.strerror or exc}") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(str(location)).name}.", suffix=f".tmp{suffix}", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        if local is not None:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, local)
        else:
            write_atomic(location, Path(tmp).read_bytes())
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as a RuntimeError
        raise StorageError(f"cannot write {location}: {_write_failure(exc, Path(tmp).parent)}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return str(location)


def _write_failure(exc: BaseException, directory: Path) -> str:
    """Why a write failed, in words (a full disk says so even when the writer did not)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    try:
        full = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize < (1 << 20)
    except OSError:
        full = False
    return "No space left on device" if full else _first_line(exc)


def append_line(location: str | Path, line: str) -> None:
    """Append one line (local files: append + fsync; object stores: rewrite the object)."""
    local = local_path(location)
    text = line if line.endswith("\n") else line + "\n"
    if local is not None:
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(local, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                end = os.lseek(fd, 0, os.SEEK_END)
                try:
                    data = text.encode()
                    while data:
                        data = data[os.write(fd, data):]
                    os.fsync(fd)
                except OSError:  # a full disk: leave no half line behind
                    os.ftruncate(fd, end)
                    raise
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot write {location}: {exc.strerror or exc}") from None
        return
    old = read_bytes(location) if exists(location) else b""
    write_atomic(location, old + text.encode())


def list_dir(location: str | Path) -> list[str]:
    """Names directly inside ``location`` (empty when it does not exist)."""
    fs, path = resolve(location)
    try:
        infos = retrying(location, "list", lambda: fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot list {location}: {_first_line(exc)}") from None
    return sorted(info.base_name for info in infos)


def delete(location: str | Path) -> None:
    """Remove a file or a directory tree (nothing when it does not exist)."""
    fs, path = resolve(location)
    kind = _info(location).type
    remove = fs.delete_dir if kind == pafs.FileType.Directory else fs.delete_file
    if kind != pafs.FileType.NotFound:
        try:
            retrying(location, "delete", lambda: remove(path))
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"cannot delete {location}: {_first_line(exc)}") from None


def move(source: str | Path, target: str | Path) -> None:
    """Rename a file or directory within one storage (an object store copies, then deletes)."""
    fs, src = resolve(source)
    _fs, dst = resolve(target)
    try:
        retrying(source, "move", lambda: fs.move(src, dst))
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot move {source} to {target}: {_first_line(exc)}") from None


def download(source: str | Path, target: Path) -> None:
    """Copy a stored file to a local path (atomically)."""
    _write_local(Path(target), read_bytes(source))


def check_writable(location: str | Path) -> None:
    """Fail in seconds, before anything starts, when ``location`` cannot be written."""
    local = local_path(location)
    if local is not None:
        probe_dir = local
        while not probe_dir.exists() and probe_dir != probe_dir.parent:
            probe_dir = probe_dir.parent
        try:  # a real write (os.access says yes to root everywhere, /proc included); removed at once
            fd, probe = tempfile.mkstemp(prefix=".jigclu-write-test-", dir=probe_dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(f"storage {location} is not writable: {exc.strerror or exc}") from None
        return
    fs, path = resolve(location)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except (OSError, pa.ArrowException) as exc:  # credentials, unreachable endpoint
        raise StorageError(f"storage {location}: {_first_line(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"storage {location}: bucket {bucket!r} does not exist")


def _write_local(path: Path, payload: bytes) -> None:
    """Temp file in the same directory, fsync, rename: a crash never leaves a partial file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["StorageError", "retrying", "is_uri", "is_local", "local_path", "normalise", "join", "parent", "resolve", "display",
           "exists", "is_file", "is_dir", "mtime", "read_bytes", "read_text", "write_atomic", "write_atomic_with",
           "append_line", "list_dir", "delete", "move", "download", "check_writable", "check_syntax", "SCHEMES"]
