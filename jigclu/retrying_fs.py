"""An object-store filesystem for Ray that rides out an outage, as :mod:`jigclu.storage` does.

Ray Train writes its checkpoints and the checkpoint manager's snapshot through the
``storage_filesystem`` jigclu gives it (Tune gets the bare one: see ``ray_storage``). With a bare
``pyarrow.fs.S3FileSystem`` an endpoint that is unreachable for ~20 s fails every retry of the
run within seconds ("training failed after 3 retries: ... NETWORK_CONNECTION ...", measured by
``benchmarks/faults/fault_matrix.py``). This wrapper retries each call's transient errors the way
``storage`` does (``JIGCLU_STORAGE_RETRY_S``), and makes writes whole: an output stream
collects the bytes and uploads them in one retried call when it is closed, so an outage in the
middle of a write retries the whole object instead of failing half-way. Reads are fetched whole
(with retries) and served from memory.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from jigclu.storage import retrying


class _Upload(io.RawIOBase):
    """A writable file that uploads everything written to it, once, when closed."""

    def __init__(self, fs: pafs.FileSystem, path: str, metadata: Any) -> None:
        self.fs, self.path, self.metadata, self.buffer = fs, path, metadata, io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self.buffer.write(data)

    def close(self) -> None:
        if not self.closed:
            payload = self.buffer.getvalue()

            def upload() -> None:
                with self.fs.open_output_stream(self.path, metadata=self.metadata) as out:
                    out.write(payload)

            retrying(f"s3://{self.path}", "write", upload)
        super().close()


class RetryingHandler(pafs.FileSystemHandler):
    """``pyarrow.fs.PyFileSystem`` handler around another filesystem (see the module doc)."""

    def __init__(self, fs: pafs.FileSystem) -> None:
        self.fs = fs

    def __reduce__(self):  # Ray ships the filesystem to its workers
        return RetryingHandler, (self.fs,)

    def _call(self, what: str, path: str, fn, *args: Any) -> Any:
        return retrying(f"{self.fs.type_name}://{path}", what, lambda: fn(*args))

    def get_type_name(self) -> str:
        return f"retrying+{self.fs.type_name}"

    def equals(self, other: Any) -> bool:
        return isinstance(other, RetryingHandler) and self.fs.equals(other.fs)

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._call("look up", ",".join(paths)[:200], self.fs.get_file_info, paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._call("list", selector.base_dir, self.fs.get_file_info, selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._call("create", path, lambda: self.fs.create_dir(path, recursive=recursive))

    def delete_dir(self, path: str) -> None:
        self._call("delete", path, self.fs.delete_dir, path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._call("delete", path, lambda: self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the store's root")

    def delete_file(self, path: str) -> None:
        self._call("delete", path, self.fs.delete_file, path)

    def move(self, src: str, dest: str) -> None:
        self._call("move", src, self.fs.move, src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self._call("copy", src, self.fs.copy_file, src, dest)

    def _read(self, path: str) -> pa.BufferReader:
        def read() -> bytes:
            with self.fs.open_input_stream(path) as fh:
                return fh.read()

        return pa.BufferReader(self._call("read", path, read))

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self._read(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self._read(path)

    def open_output_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        return pa.PythonFile(_Upload(self.fs, path, metadata), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        raise OSError("appending is not supported on an object store")


def retrying_filesystem(fs: pafs.FileSystem) -> pafs.FileSystem:
    """``fs`` with transient errors retried (local filesystems are returned as they are)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return fs
    return pafs.PyFileSystem(RetryingHandler(fs))


__all__ = ["RetryingHandler", "retrying_filesystem"]
