"""Quiet by default: Spark, py4j, TensorFlow and absl start-up noise off unless
``PYTHIA_VERBOSE=1``, so a run's log says what the steps did.

``install()`` (called by the flow file before anything starts a JVM or imports TensorFlow)
points Spark's JVM at an errors-only log4j profile and binds it to loopback (no hostname
warning), raises TensorFlow's C++ log threshold and hooks the first ``import tensorflow``
(wherever it happens) so that its start-up lines are dropped. Two kinds of lines no setting
silences: the JVM's own notices (``--add-modules=jdk.incubator.vector``, which Spark's launcher
always passes, makes the JVM print "Using incubator modules"), filtered from the JVM's stderr by
``filter_stream`` (``etl.session`` pipes it through), and TensorFlow's import lines (absl's
pre-init notice, oneDNN's INFO line), dropped by capturing file descriptor 2 during the import.
With ``PYTHIA_VERBOSE=1`` nothing is filtered.
"""
from __future__ import annotations

import importlib.abc
import importlib.resources
import importlib.util
import io
import logging
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager, redirect_stdout
from typing import IO, Any, Iterator, Sequence

VERBOSE_ENV = "PYTHIA_VERBOSE"
LOG4J_FILE = "log4j2-quiet.properties"
# Lines TensorFlow prints at import whatever TF_CPP_MIN_LOG_LEVEL says.
TF_IMPORT_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^I0000 .*port\.cc:\d+\] oneDNN custom operations are on"),
    re.compile(r"^I0000 .*cpu_feature_guard\.cc"),
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow"),
)
# Lines the JVM behind a local Spark session prints at start whatever log4j says: module-system
# notices (JDK 9-16 illegal access, 17+ incubator modules, 23+ sun.misc.Unsafe) and the
# notices Spark prints before its logging is configured.
JVM_START_NOISE = (
    re.compile(r"^WARNING: Using incubator modules: "),
    re.compile(r"^WARNING: (An )?[Ii]llegal reflective access"),
    re.compile(r"^WARNING: (Please consider reporting this|Use --illegal-access=warn|"
               r"All illegal access operations will be denied)"),
    re.compile(r"^WARNING: (A terminally deprecated method in sun\.misc\.Unsafe|"
               r"sun\.misc\.Unsafe::)"),
    re.compile(r"^Using Spark's default log4j profile"),
    re.compile(r"^Setting default log level to "),
    re.compile(r"^To adjust logging level use sc\.setLogLevel"),
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
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def filter_stream(stream: IO[bytes], patterns: Sequence[re.Pattern] = JVM_START_NOISE,
                  name: str = "pythia-jvm-stderr") -> threading.Thread:
    """Copy ``stream`` (a child's stderr pipe) line by line to this process's stderr, dropping
    lines that match ``patterns``; a daemon thread that ends when the child closes the pipe.

    The pipe is always drained, so a child writing a lot to stderr never blocks on it.
    """
    def _pump() -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf8", "replace")
            if any(p.search(line) for p in patterns):
                continue
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):  # our stderr went away: keep draining the pipe
                pass
        stream.close()

    thread = threading.Thread(target=_pump, name=name, daemon=True)
    thread.start()
    return thread


@contextmanager
def _fd2_filtered(patterns: Sequence[re.Pattern]) -> Iterator[None]:
    """File descriptor 2 captured for the block (C++ libraries write there directly); every
    line not matching ``patterns`` is written back afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf8", "replace").splitlines()
                    if not any(p.search(line) for p in patterns)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first ``import tensorflow`` of the process (from any module) with its start-up
    lines dropped, then steps out of the import system."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or verbose():
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            with _fd2_filtered(TF_IMPORT_NOISE):
                run_module(module)

        spec.loader.exec_module = exec_module  # this module's own loader instance
        return spec


def import_tensorflow() -> Any:
    """``import tensorflow`` without its unconditional start-up lines (other output kept)."""
    if "tensorflow" in sys.modules or verbose():
        import tensorflow as tf
        return tf
    for finder in [f for f in sys.meta_path if isinstance(f, _QuietTensorFlowImport)]:
        sys.meta_path.remove(finder)  # filtered here already
    with _fd2_filtered(TF_IMPORT_NOISE):
        import tensorflow as tf
    return tf


@contextmanager
def library_prints() -> Iterator[None]:
    """Drop what a library ``print``s to stdout inside the block (e.g. pytorch-tabnet's
    "Stop training because you reached max_epochs" after every fit, which no option silences
    and which our own per-candidate line says better), unless ``PYTHIA_VERBOSE=1``."""
    if verbose():
        yield
        return
    with redirect_stdout(io.StringIO()):
        yield
