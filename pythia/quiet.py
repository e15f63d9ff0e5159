"""Quiet by default: Spark, py4j, TensorFlow and absl start-up noise off unless
``PYTHIA_VERBOSE=1``, so a run's log says what the steps did.

``install()`` (called by the flow file before anything starts a JVM or imports TensorFlow)
points Spark's JVM at an errors-only log4j profile and binds it to loopback (no hostname
warning), and raises TensorFlow's C++ log threshold. TensorFlow prints two lines at import that
no setting silences (absl's pre-init notice and oneDNN's INFO line): ``import_tensorflow()``
imports it with file descriptor 2 captured and replays every other line.
"""
from __future__ import annotations

import importlib.resources
import logging
import os
import re
import sys
import tempfile
from typing import Any

VERBOSE_ENV = "PYTHIA_VERBOSE"
LOG4J_FILE = "log4j2-quiet.properties"
# Lines TensorFlow prints at import whatever TF_CPP_MIN_LOG_LEVEL says.
TF_IMPORT_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^I0000 .*port\.cc:\d+\] oneDNN custom operations are on"),
    re.compile(r"^I0000 .*cpu_feature_guard\.cc"),
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow"),
)


def verbose() -> bool:
    """Whether the user asked for every library's own output (``PYTHIA_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def install() -> None:
    """Set the quiet defaults in this process's environment (children inherit them); a user's
    own settings of the same variables win, and ``PYTHIA_VERBOSE=1`` leaves everything as is."""
    if verbose():
        return
    log4j = importlib.resources.files("pythia").joinpath("data", LOG4J_FILE)
    opts = os.environ.get("SPARK_SUBMIT_OPTS", "")
    if "log4j2.configurationFile" not in opts:
        os.environ["SPARK_SUBMIT_OPTS"] = f"{opts} -Dlog4j2.configurationFile=file:{log4j}".strip()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("py4j", "py4j.clientserver", "py4j.java_gateway"):
        logging.getLogger(name).setLevel(logging.ERROR)


def import_tensorflow() -> Any:
    """``import tensorflow`` without its unconditional start-up lines (other output kept)."""
    if "tensorflow" in sys.modules or verbose():
        import tensorflow as tf
        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf8", "replace").splitlines()
                    if not any(p.search(line) for p in TF_IMPORT_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return tf
