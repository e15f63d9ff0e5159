"""RunPaths: every run-scoped location is derived here, nowhere else.

A run's large files live under ``<data_root>/<flow>/<run_id>/``. Steps record the paths they
wrote in manifests; downstream steps read paths from manifests, never rebuild them from the
current run id (a resumed run clones finished tasks whose files live under the origin run).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_DATA_DIRNAME = ".pythia"


def default_data_root() -> str:
    """``$PYTHIA_DATA_ROOT`` if set, else ``./.pythia/data`` under the working folder."""
    root = os.environ.get("PYTHIA_DATA_ROOT")
    if root:
        return root
    return os.path.join(os.getcwd(), DEFAULT_DATA_DIRNAME, "data")


def default_cache_root() -> str:
    """Where generated synthetic worlds are cached: ``$PYTHIA_CACHE`` or ``./.pythia/worlds``."""
    root = os.environ.get("PYTHIA_CACHE")
    if root:
        return root
    return os.path.join(os.getcwd(), DEFAULT_DATA_DIRNAME, "worlds")


# what Metaflow sets in a step's container on Kubernetes (also under Argo and Airflow) and on
# AWS Batch (also under Step Functions): the step runs where no other step sees its folders
REMOTE_MARKERS = (("METAFLOW_KUBERNETES_WORKLOAD", "Kubernetes"), ("AWS_BATCH_JOB_ID",
                                                                   "AWS Batch"))


def _remote(environ) -> str | None:
    """'Kubernetes' / 'AWS Batch' when this process runs in such a container, else None."""
    return next((name for marker, name in REMOTE_MARKERS if environ.get(marker)), None)


def check_remote_roots(data_root: str, source: str, environ=None) -> None:
    """Raise ValueError (one line naming the fix) when this step runs in a container on
    Kubernetes or AWS Batch and the run's files (``data_root``: the ``--data_root`` value;
    '' = ``default_data_root``) or a ``synthetic://`` world would go to the default
    ``./.pythia/…`` folder of its own container, where the next step's cannot read them."""
    environ = os.environ if environ is None else environ
    where = _remote(environ)
    if where is None:
        return
    own = os.path.join(os.getcwd(), DEFAULT_DATA_DIRNAME)
    if not data_root and not environ.get("PYTHIA_DATA_ROOT"):
        raise ValueError(f"this step runs on {where}, and the run's files would go to {own}/data, "
                         "a folder of its own container: pass --data_root s3://BUCKET/pythia "
                         "or export PYTHIA_DATA_ROOT (the flow forwards PYTHIA_* to every step)")
    if str(source).startswith("synthetic://") and not environ.get("PYTHIA_CACHE"):
        raise ValueError(f"this step runs on {where}, and {source} would be generated into "
                         f"{own}/worlds, a folder of its own container: export "
                         "PYTHIA_CACHE=s3://BUCKET/worlds, or `pythia synth` the world to S3 "
                         "and pass --source s3://…")


def check_step_root(data_root: str, environ=None) -> None:
    """Raise ValueError (one line naming the fix) when this step runs in a container on
    Kubernetes or AWS Batch and the run's local ``data_root`` (chosen by ``start``, which may
    have run elsewhere: on the launching machine, or with ``@kubernetes`` on some steps only)
    is not a folder of this container. A folder every step mounts (EFS) exists and passes;
    ``s3://`` always does. ``start`` has ``check_remote_roots``."""
    environ = os.environ if environ is None else environ
    where = _remote(environ)
    if where is None or str(data_root).startswith(("s3://", "s3a://")) \
            or os.path.isdir(data_root):
        return
    raise ValueError(f"this step runs on {where}, and the run's files are under {data_root}, "
                     "a folder this container does not have (the start step that chose it ran "
                     "elsewhere): pass --data_root s3://BUCKET/pythia (or export "
                     "PYTHIA_DATA_ROOT before the run), or mount that folder in every step")


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URIs (s3://…) alike."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


@dataclass(frozen=True)
class RunPaths:
    """Locations of one run's files. ``root`` may be a local folder or an ``s3://`` prefix."""

    root: str
    flow_name: str
    run_id: str

    @property
    def base(self) -> str:
        return join(self.root, self.flow_name, str(self.run_id))

    @property
    def labels(self) -> str:
        return join(self.base, "labels")

    def etl_hours(self, hours: list[int]) -> str:
        return join(self.base, "etl", "hours=" + "-".join(f"{h:02d}" for h in hours))

    @property
    def etl_duplicates(self) -> str:
        """Ids of rows that lost to a duplicate in another ETL task (``etl.dedupe``)."""
        return join(self.base, "etl", "duplicates")

    @property
    def quarantine(self) -> str:
        return join(self.base, "quarantine")

    @property
    def splits(self) -> str:
        return join(self.base, "splits")

    def split(self, name: str) -> str:
        return join(self.splits, f"split={name}")

    @property
    def tfrecords(self) -> str:
        return join(self.base, "tfrecords")

    def model(self, model: str, region: str, config_id: int = 0) -> str:
        return join(self.base, "models", f"{model}__{region}__{config_id}")

    def predictions(self, model: str, region: str, config_id: int = 0) -> str:
        return join(self.base, "predictions", f"{model}__{region}__{config_id}.parquet")

    @property
    def reports(self) -> str:
        return join(self.base, "reports")

    @property
    def bundle(self) -> str:
        return join(self.base, "bundle")
