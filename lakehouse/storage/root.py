"""Paths and filesystems: the one place that turns settings into URIs, a pyarrow filesystem and deltalake options.

Everything below the root is addressed by a *relative* path (``raw/orders/1995-03/part-0.csv``); this module joins it
to the root for whichever backend the root names. Objects here hold only strings, so they pickle cleanly to Ray
workers; the filesystem is built lazily in each process.
"""

from __future__ import annotations

import functools
import http.client
import posixpath
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from lakehouse.errors import ConfigError
from lakehouse.settings import Settings


@dataclass(frozen=True)
class FileEntry:
    """A file under the root: relative path, size in bytes, modification time in ms since the epoch."""

    path: str
    size: int
    mtime_ms: int


@dataclass(frozen=True)
class Storage:
    """The root of a lakehouse and how to reach it."""

    root: str
    # deltalake-style options, credentials among them: never in the repr (a Storage is in many a task's arguments)
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        return cls(root=settings.root.rstrip("/"), options=tuple(sorted(settings.storage_options.items())))

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    def uri(self, rel: str) -> str:
        """Full URI of a relative path (what deltalake and users see)."""
        return f"{self.root}/{rel}" if rel else self.root

    def fs_path(self, rel: str) -> str:
        """Path of a relative path inside :meth:`filesystem` (no scheme)."""
        base = self.root[len("s3://") :] if self.is_s3 else self.root
        return posixpath.join(base, rel) if rel else base

    def check_answers(self, timeout: float) -> None:
        """For an S3 root at an explicit endpoint (``AWS_ENDPOINT_URL``), fail within ``timeout`` seconds, naming the
        endpoint, when it does not answer an HTTP request: the S3 clients retry a silent endpoint for minutes (seen:
        6 minutes, then "Generic S3 error"). Any HTTP answer will do; what it says is the clients' business."""
        endpoint = dict(self.options).get("AWS_ENDPOINT_URL", "")
        if not self.is_s3 or not endpoint:
            return
        url = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        connection = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        began = time.monotonic()
        try:
            conn = connection(url.hostname or "", url.port, timeout=timeout)
            try:
                conn.request("HEAD", "/")
                conn.getresponse()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, ssl.SSLError):  # something speaks TLS there: the clients will say what is wrong
                return
            why = "no answer" if isinstance(e, TimeoutError) else (getattr(e, "strerror", None) or str(e) or
                                                                  type(e).__name__).lower()
            raise ConfigError(
                f"the S3 endpoint {endpoint} (AWS_ENDPOINT_URL) of root {self.root} does not answer: {why} after "
                f"{time.monotonic() - began:.0f} s. Check that the object store runs there and that the address and "
                f"port are right. (The wait is storage_timeout in [settings], or LAKEHOUSE_STORAGE_TIMEOUT: "
                f"{timeout:g} s.)") from e

    def check_conditional_puts(self) -> None:
        """Refuse an S3 store whose PUTs ignore ``If-None-Match: *``: delta-rs commits a version by putting its log
        file only if it is not there yet, so on such a store two writers at once both "win" and one's commit is lost
        without a word. Checked once per process and store: a probe object under ``_meta/`` put twice, the second
        time expecting to be refused, then deleted."""
        if self.is_s3:
            _probe_conditional_puts(self.root, self.options)

    def delta_options(self) -> dict[str, str]:
        return dict(self.options)

    def filesystem(self) -> pafs.FileSystem:
        return _filesystem(self.is_s3, self.options)

    def list_files(self, rel_dir: str) -> Iterator[FileEntry]:
        """Every file under ``rel_dir``, recursively, skipping hidden and in-progress files (``.``/``_`` prefix)."""
        fs = self.filesystem()
        base = self.fs_path(rel_dir)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        prefix_len = len(self.fs_path("")) + 1
        for info in fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            name = posixpath.basename(info.path)
            if name.startswith((".", "_")):
                continue
            mtime = int(info.mtime.timestamp() * 1000) if info.mtime else 0
            yield FileEntry(path=info.path[prefix_len:], size=int(info.size or 0), mtime_ms=mtime)

    def open_input(self, rel: str) -> pafs.NativeFile:
        return self.filesystem().open_input_file(self.fs_path(rel))

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Write a whole file so readers never see half of it (rename on local disk; S3 PUT is atomic)."""
        fs = self.filesystem()
        target = self.fs_path(rel)
        if self.is_s3:
            # One PUT (the filesystem opens lazily, see _filesystem): S3 has no directories to create, and creating
            # them cost a HEAD of the bucket and a PUT and HEAD per level for every file written.
            with fs.open_output_stream(target) as out:
                out.write(data)
            return
        fs.create_dir(posixpath.dirname(target), recursive=True)
        tmp = posixpath.join(posixpath.dirname(target), f".{posixpath.basename(target)}.tmp")
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, target)

    def exists(self, rel: str) -> bool:
        return self.filesystem().get_file_info(self.fs_path(rel)).type != pafs.FileType.NotFound

    def delete_dir(self, rel: str) -> None:
        fs = self.filesystem()
        path = self.fs_path(rel)
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            try:
                fs.delete_dir(path)
            except FileNotFoundError:  # deleted concurrently
                pass


@functools.lru_cache(maxsize=8)
def _probe_conditional_puts(root: str, options: tuple[tuple[str, str], ...]) -> None:
    import s3fs

    opts = dict(options)
    endpoint = opts.get("AWS_ENDPOINT_URL") or None
    fs = s3fs.S3FileSystem(key=opts.get("AWS_ACCESS_KEY_ID"), secret=opts.get("AWS_SECRET_ACCESS_KEY"),
                           token=opts.get("AWS_SESSION_TOKEN"),
                           client_kwargs={"endpoint_url": endpoint, "region_name": opts.get("AWS_REGION")})
    bucket, _, prefix = root[len("s3://"):].partition("/")
    key = posixpath.join(prefix, "_meta", f".conditional-put-probe-{uuid.uuid4().hex}")
    store = f"{endpoint or 'AWS S3'} (root {root})"
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"2", IfNoneMatch="*")
        except FileExistsError:  # 412 Precondition Failed: the store honours it
            return
        raise ConfigError(
            f"the object store at {store} does not honour conditional writes: a second PUT with If-None-Match: * "
            "of the same key was accepted. Delta commits rely on it: two runs at once would overwrite each other's "
            "commits and lose data silently. Use a store that refuses such a PUT with 412 (AWS S3, MinIO, Ceph RGW "
            "and Cloudflare R2 do), or, if only one writer ever runs, set allow_unsafe_store = true in [settings] "
            "(LAKEHOUSE_ALLOW_UNSAFE_STORE=true).")
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"could not check conditional writes on the object store at {store}: "
                          f"{type(e).__name__}: {e}") from e
    finally:
        try:
            fs.call_s3("delete_object", Bucket=bucket, Key=key)
        except Exception:  # the probe is tiny, under _meta/: left behind, it harms nothing
            pass


@functools.lru_cache(maxsize=8)
def _filesystem(is_s3: bool, options: tuple[tuple[str, str], ...]) -> pafs.FileSystem:
    if not is_s3:
        return pafs.LocalFileSystem()
    opts = dict(options)
    endpoint = opts.get("AWS_ENDPOINT_URL", "")
    scheme = "http" if endpoint.startswith("http://") or opts.get("AWS_ALLOW_HTTP") == "true" else "https"
    return pafs.S3FileSystem(
        access_key=opts.get("AWS_ACCESS_KEY_ID"),
        secret_key=opts.get("AWS_SECRET_ACCESS_KEY"),
        session_token=opts.get("AWS_SESSION_TOKEN"),
        region=opts.get("AWS_REGION", "us-east-1"),
        endpoint_override=endpoint.split("://", 1)[-1] or None,
        scheme=scheme,
        # A file smaller than one part goes up as one PutObject, not a multipart upload's three requests: the upload
        # starts with the first full part (the cost: a bad bucket is only reported when the file is closed).
        allow_delayed_open=True,
    )
