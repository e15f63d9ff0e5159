"""Local-or-S3 file I/O in one code path (pyarrow filesystems), with atomic writes.

Every run-scoped file goes through here, so a ``data_root`` of ``s3://bucket/prefix`` works
exactly like a local folder. Credentials come only from the standard AWS chain (environment,
config files, instance roles); an S3-compatible endpoint is taken from ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL`` or ``METAFLOW_S3_ENDPOINT_URL``. Nothing here ever logs a credential.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

import pyarrow.fs as pafs

from pythia.scratch import scratch_dir, tree_bytes as local_tree_bytes


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://") or str(uri).startswith("s3a://")


def s3_endpoint() -> str | None:
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "METAFLOW_S3_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    return None


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path inside it."""
    if is_s3(uri):
        path = str(uri).split("://", 1)[1]
        endpoint = s3_endpoint()
        kwargs: dict[str, Any] = {}
        if endpoint:
            kwargs["endpoint_override"] = endpoint
            kwargs["scheme"] = "https" if endpoint.startswith("https") else "http"
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), path
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def list_files(uri: str, recursive: bool = True) -> list[str]:
    """Files (not folders) under ``uri``, as URIs of the same scheme, sorted."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    prefix = "s3://" if is_s3(uri) else ""
    return sorted(prefix + i.path for i in infos if i.type == pafs.FileType.File)


def subfolders(uri: str) -> list[str]:
    """The names of the folders directly under ``uri`` (S3: its common prefixes), sorted;
    [] when ``uri`` is gone."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def tree_bytes(uri: str) -> int:
    """The bytes of the files under ``uri`` (local or S3; 0 when it is gone)."""
    if not is_s3(uri):
        return local_tree_bytes(uri)
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sum(max(i.size or 0, 0) for i in infos if i.type == pafs.FileType.File)


def remove_tree(uri: str) -> None:
    """Delete the folder ``uri`` and everything under it (local or S3: every object under the
    prefix); nothing when it is already gone."""
    if not is_s3(uri):
        shutil.rmtree(os.path.abspath(uri), ignore_errors=True)
        return
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no such file: {uri}") from exc


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so that readers see either nothing or the whole file.

    Locally: a temporary name in the same folder, then ``os.replace``. On S3 a single PUT is
    already atomic (an object is invisible until its upload completes).
    """
    if is_s3(uri):
        fs, path = filesystem(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    path = os.path.abspath(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove(uri: str) -> None:
    """Delete the file at ``uri`` (local or S3); nothing when it is already gone."""
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def write_json_atomic(uri: str, doc: Any) -> None:
    write_bytes_atomic(uri, json.dumps(doc, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def upload_dir(local_dir: str, uri: str) -> list[str]:
    """Copy a local folder's files to ``uri`` (each file atomically); returns the new URIs."""
    out = []
    for dirpath, _, files in os.walk(local_dir):
        for name in sorted(files):
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            dst = uri.rstrip("/") + "/" + rel
            with open(src, "rb") as f:
                write_bytes_atomic(dst, f.read())
            out.append(dst)
    return out


def download_dir(uri: str, local_dir: str) -> str:
    """Copy every file under ``uri`` into ``local_dir`` (kept relative layout)."""
    fs, base = filesystem(uri)
    for f in list_files(uri):
        _, path = filesystem(f)
        rel = os.path.relpath(path, base)
        dst = os.path.join(local_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with fs.open_input_stream(path) as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out)
    return local_dir


@contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding ``uri``'s content: the path itself when local, a temp copy on S3
    (a ``pythia.scratch`` folder: removed on exit, or swept if this process is killed)."""
    if not is_s3(uri):
        yield os.path.abspath(uri)
        return
    with scratch_dir("pythia-copy-") as tmp:
        yield download_dir(uri, tmp)


@contextmanager
def staged_dir(uri: str) -> Iterator[str]:
    """A local folder to write into; its content is published to ``uri`` on success.

    Locally the folder is a hidden sibling renamed into place at the end, so a killed writer
    never leaves a half-written ``uri``; on S3 files are uploaded once complete, from a
    ``pythia.scratch`` folder (swept if this process is killed).
    """
    if is_s3(uri):
        with scratch_dir("pythia-stage-") as tmp:
            yield tmp
            upload_dir(tmp, uri)
        return
    final = os.path.abspath(uri)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}-{os.path.basename(final)}")
    os.makedirs(tmp)
    try:
        yield tmp
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def read_frame(uri: str) -> "Any":
    """Read a (hive-partitioned) Parquet folder or file, local or S3, into pandas."""
    import pyarrow.dataset as ds
    fs, path = filesystem(uri)
    try:
        return ds.dataset(path, filesystem=fs, format="parquet",
                          partitioning="hive").to_table().to_pandas()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no Parquet data at {uri}") from exc
