"""Local paths and cloud URIs behind one interface (pyarrow filesystems).

Datasets and converted shards may live on the local disk or in object storage (``s3://``,
``gs://``). pyarrow already speaks all of these, so every reader and writer in
:mod:`jigclu.data` resolves its location here instead of special-casing schemes.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs

from jigclu.errors import DataError


def is_uri(location: str) -> bool:
    """Whether ``location`` carries a scheme (``s3://...``, ``file:///...``)."""
    return "://" in location


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or a URI.

    Local paths are made absolute (``~`` expanded) because
    :meth:`pyarrow.fs.FileSystem.from_uri` rejects relative paths and error messages are clearer
    with the full path in them.
    """
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    try:
        return pafs.FileSystem.from_uri(location)
    except (OSError, ValueError, pa.ArrowException) as exc:
        # Typical causes: an unknown scheme, a pyarrow built without S3/GCS, bad credentials.
        raise DataError(f"cannot open {location}: {exc}") from exc


def display(fs: pafs.FileSystem, path: str) -> str:
    """A location as the user would write it (scheme included for remote filesystems)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    scheme = {"gcs": "gs"}.get(fs.type_name, fs.type_name)
    return f"{scheme}://{path}"
