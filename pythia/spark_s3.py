"""Spark <-> S3: the ``fs.s3a.*`` settings, s3:// -> s3a:// paths, and a local-mode fallback.

Spark reads ``s3a://`` through Hadoop's S3A connector, which needs two jars that pyspark does
not ship: ``org.apache.hadoop:hadoop-aws`` (the same version as pyspark's
``hadoop-client-api-*.jar``) and the AWS SDK v2 ``bundle`` it depends on. Clusters normally
have them; locally they are found in ``$PYTHIA_S3A_JARS`` (a folder) or fetched by Spark from
``$PYTHIA_S3A_PACKAGES`` (Maven coordinates). Without them a *local-mode* session still works on
S3 by staging through the local disk (``spark_readable`` / ``spark_writable``); a cluster
without S3A cannot, and gets a clear error instead of a silent local path.

Credentials are never put into Spark settings: S3A uses the AWS SDK's default chain
(environment, profile, web identity/IRSA, container and instance roles), like boto3 does.
"""
from __future__ import annotations

import glob
import os
import shutil
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import pyarrow.fs as pafs

from pythia import storage
from pythia.scratch import ScratchDir

S3A_FILESYSTEM = "org.apache.hadoop.fs.s3a.S3AFileSystem"
# The SDK v2 default chain; Hadoop >= 3.4 (pyspark 4.x ships 3.4/3.5) accepts v2 providers.
DEFAULT_CREDENTIALS_PROVIDER = "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
JARS_DIR_ENV = "PYTHIA_S3A_JARS"          # a folder holding hadoop-aws-*.jar and bundle-*.jar
PACKAGES_ENV = "PYTHIA_S3A_PACKAGES"      # e.g. org.apache.hadoop:hadoop-aws:3.5.0
_HADOOP_AWS_GLOB = "hadoop-aws-*.jar"
_SDK_BUNDLE_GLOB = "bundle-2*.jar"        # software.amazon.awssdk:bundle


def to_s3a(uri: str) -> str:
    """The Spark (Hadoop) form of an S3 URI: ``s3://b/k`` -> ``s3a://b/k``; others unchanged."""
    text = str(uri)
    if text.startswith("s3://"):
        return "s3a://" + text[len("s3://"):]
    return text


def from_s3a(uri: str) -> str:
    """The pyarrow/boto3 form of an S3 URI: ``s3a://b/k`` -> ``s3://b/k``; others unchanged."""
    text = str(uri)
    if text.startswith("s3a://"):
        return "s3://" + text[len("s3a://"):]
    return text


def s3a_conf(endpoint: str | None = None, region: str | None = None) -> dict[str, str]:
    """Spark settings for S3A: endpoint, path-style access, the default credentials chain.

    Args:
        endpoint: an S3-compatible endpoint URL (MinIO, moto, Ceph…); ``None`` = AWS itself.
            Any endpoint gets path-style access (virtual-host buckets need DNS it rarely has).
        region: the bucket region; default ``$AWS_REGION`` / ``$AWS_DEFAULT_REGION``. The SDK
            v2 needs one when an endpoint is set.

    Returns:
        ``spark.hadoop.fs.s3a.*`` settings; never a key or secret.
    """
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    conf = {
        "spark.hadoop.fs.s3a.impl": S3A_FILESYSTEM,
        "spark.hadoop.fs.s3a.aws.credentials.provider": DEFAULT_CREDENTIALS_PROVIDER,
    }
    if endpoint:
        if "://" not in endpoint:
            raise ValueError(f"S3 endpoint must be a URL with a scheme (http:// or https://), "
                             f"got {endpoint!r}")
        conf.update({
            "spark.hadoop.fs.s3a.endpoint": endpoint,
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": str(
                endpoint.startswith("https://")).lower(),
        })
    if region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = region
    return conf


def find_s3a_jars(jars_dir: str | None = None) -> list[str]:
    """The hadoop-aws jar and the AWS SDK bundle in ``jars_dir`` (default ``$PYTHIA_S3A_JARS``,
    then pyspark's own ``jars/``); ``[]`` unless both are there."""
    dirs = [d for d in (jars_dir, os.environ.get(JARS_DIR_ENV), _pyspark_jars_dir()) if d]
    for d in dirs:
        aws = sorted(glob.glob(os.path.join(d, _HADOOP_AWS_GLOB)))
        sdk = sorted(glob.glob(os.path.join(d, _SDK_BUNDLE_GLOB)))
        if aws and sdk:
            return [aws[-1], sdk[-1]]
    return []


def _pyspark_jars_dir() -> str | None:
    try:
        import pyspark
    except ImportError:
        return None
    return os.path.join(os.path.dirname(pyspark.__file__), "jars")


def hadoop_version() -> str | None:
    """The Hadoop version bundled with pyspark (from ``hadoop-client-api-X.jar``), if found."""
    d = _pyspark_jars_dir()
    jars = sorted(glob.glob(os.path.join(d, "hadoop-client-api-*.jar"))) if d else []
    if not jars:
        return None
    return os.path.basename(jars[-1])[len("hadoop-client-api-"):-len(".jar")]


def s3a_session_conf(endpoint: str | None = None) -> dict[str, str] | None:
    """Everything a *new* session needs for ``s3a://``: jars (or packages) plus ``s3a_conf``.

    Returns ``None`` when no S3A jars are available locally and no packages are configured:
    the caller must then stage S3 data through local disk (``spark_read_path``,
    ``spark_writable``).
    """
    endpoint = endpoint if endpoint is not None else storage.s3_endpoint()
    conf = s3a_conf(endpoint)
    jars = find_s3a_jars()
    if jars:
        conf["spark.jars"] = ",".join(jars)
    elif os.environ.get(PACKAGES_ENV):
        conf["spark.jars.packages"] = os.environ[PACKAGES_ENV]
    else:
        return None
    return conf


def session_conf_for(*uris: str) -> dict[str, str]:
    """Extra settings for a session that will touch ``uris``: S3A settings when any is on S3
    and S3A is available, else ``{}`` (local paths, or the staging fallback)."""
    if not any(storage.is_s3(u) for u in uris if u):
        return {}
    return s3a_session_conf() or {}


def s3a_available(spark: Any) -> bool:
    """Whether this session can open ``s3a://`` paths.

    A classic session asks Hadoop the question Spark's own reader asks (which class serves
    the ``s3a`` scheme under this session's Hadoop configuration and class loader); a Spark
    Connect session is assumed to (the cluster owns S3 access and there is no JVM to ask).
    """
    if _is_connect(spark):
        return True
    sc = spark.sparkContext
    try:
        sc._jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass(
            "s3a", sc._jsc.hadoopConfiguration())
        return True
    except Exception:  # py4j wraps ClassNotFound / UnsupportedFileSystemException
        return False


def _is_connect(spark: Any) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


def _require_local_mode(spark: Any, uri: str) -> None:
    if _is_connect(spark):
        return
    master = spark.sparkContext.master
    if not master.startswith("local"):
        raise RuntimeError(
            f"{uri} is on S3 but this Spark session (master {master}) has no S3A connector; "
            f"staging through local disk only works in local mode. Give the cluster the "
            f"hadoop-aws jar (see docs/scaling.md) or set ${JARS_DIR_ENV}/${PACKAGES_ENV}.")


@contextmanager
def spark_readable(spark: Any, uri: str) -> Iterator[str]:
    """A path Spark can read holding ``uri``'s content.

    Local paths pass through; S3 gives ``s3a://…`` when the session has S3A, else a local
    copy (local mode only) that is removed on exit — read eagerly (cache/collect/write) inside
    the ``with`` block, since Spark evaluates lazily.
    """
    if not storage.is_s3(uri):
        yield uri
        return
    if s3a_available(spark):
        yield to_s3a(uri)
        return
    _require_local_mode(spark, uri)
    with storage.local_copy(from_s3a(uri)) as local:
        yield local


_stage_root: ScratchDir | None = None


def _process_stage_root() -> str:
    """A temp folder for staged S3 reads that lives as long as this process: a
    ``pythia.scratch`` folder, removed at exit (or swept by a later task if this one is
    killed)."""
    global _stage_root
    if _stage_root is None or not os.path.isdir(_stage_root.path):
        if _stage_root is not None:
            _stage_root.close()
        _stage_root = ScratchDir("pythia-s3-stage-")
    return _stage_root.path


def spark_read_path(spark: Any, uri: str) -> str:
    """The path to hand ``spark.read`` for ``uri`` (a file or a folder), for lazy reads.

    Local paths pass through and S3 gives ``s3a://…`` when the session has S3A. Otherwise (a
    local-mode session without the jars) the object(s) are downloaded into a folder that lives
    until the process exits, since a lazy DataFrame may read them at any later action; one
    Metaflow task is one process, so a task's staged copies go with it.
    """
    if not storage.is_s3(uri):
        return uri
    if s3a_available(spark):
        return to_s3a(uri)
    _require_local_mode(spark, uri)
    src = from_s3a(uri)
    fs, path = storage.filesystem(src)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file or folder: {uri}")
    dest = os.path.join(_process_stage_root(), uuid.uuid4().hex, os.path.basename(path))
    if info.type == pafs.FileType.File:
        os.makedirs(os.path.dirname(dest))
        with open(dest, "wb") as f:
            f.write(storage.read_bytes(src))
    else:
        storage.download_dir(src, dest)
    return dest


@contextmanager
def spark_writable(spark: Any, uri: str) -> Iterator[str]:
    """A path for Spark to write into; its content is published to ``uri`` on success.

    S3 with S3A: ``s3a://…`` (Spark's own committer publishes). S3 without S3A (local mode
    only): a local folder uploaded file by file once the block succeeds. Local paths: a staged
    sibling folder renamed into place (``storage.staged_dir``), so a failed write leaves
    nothing behind. Write with ``mode("overwrite")`` into the yielded path.
    """
    if storage.is_s3(uri) and s3a_available(spark):
        yield to_s3a(uri)
        return
    if storage.is_s3(uri):
        _require_local_mode(spark, uri)
    with storage.staged_dir(from_s3a(uri)) as staged:
        # Spark's writer creates the folder itself and refuses some existing ones; hand it a
        # fresh child and move its files up afterwards.
        target = os.path.join(staged, "_spark")
        yield target
        if os.path.isdir(target):
            for name in os.listdir(target):
                shutil.move(os.path.join(target, name), os.path.join(staged, name))
            os.rmdir(target)
        if storage.is_s3(uri):
            _drop_checksums(staged)


def _drop_checksums(folder: str) -> None:
    """Remove Hadoop's local ``.crc`` side files: they only describe the local copy."""
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and name.endswith(".crc"):
                os.remove(os.path.join(dirpath, name))


def describe(conf: Mapping[str, str]) -> str:
    """A loggable one-line summary of Spark settings (values of secret-looking keys masked)."""
    parts = []
    for key in sorted(conf):
        low = key.lower()
        masked = any(w in low for w in ("secret", "password", "token", "access.key",
                                        "session.key"))
        parts.append(f"{key}={'***' if masked else conf[key]}")
    return " ".join(parts)
