"""Quiet by default: library start-up noise off unless PYTHIA_VERBOSE=1."""
import functools
import os
import subprocess
import sys

import pytest

from pythia import quiet

SNIPPET = ("from pythia import quiet; quiet.install(); tf = quiet.import_tensorflow(); "
           "import sys; print('tf', tf.constant(1).numpy(), file=sys.stderr)")
# What a step does: the flow file's quiet.install(), a Spark session through the one helper
# (a job whose error is printed by Spark's Python side), then TensorFlow imported by a plain
# ``import`` as the model modules do.
STEP_SNIPPET = """
import sys
from pythia import quiet
quiet.install()
from pythia.etl.session import get_spark
spark = get_spark("pythia-quiet-test", master="local[1]")
print("spark", spark.range(3).count(), file=sys.stderr)
spark.stop()
import tensorflow as tf
print("tf", tf.constant(1).numpy(), file=sys.stderr)
"""
SPARK_NOISE = ("Using incubator modules", "Setting default log level",
               "To adjust logging level use sc.setLogLevel", "Using Spark's default log4j")
TF_NOISE = ("absl::InitializeLog", "oneDNN custom operations")
RAW_TF = "import sys; import tensorflow as tf; print('tf', tf.constant(1).numpy(), file=sys.stderr)"


@functools.cache
def _tf_noise_here() -> tuple[str, ...]:
    """The TF_NOISE lines a plain TensorFlow import prints on this machine: the oneDNN line
    only where oneDNN is on by default (CPUs with AVX512_VNNI, AVX512_BF16 or AMX), so a
    verbose run is checked for what TensorFlow really says here."""
    raw = _run({}, RAW_TF)
    assert raw.returncode == 0, raw.stderr
    said = tuple(n for n in TF_NOISE if n in raw.stderr)
    assert "absl::InitializeLog" in said, raw.stderr  # printed on every CPU
    return said


def _run(env_extra, snippet=SNIPPET):
    env = {k: v for k, v in os.environ.items() if k not in (
        "PYTHIA_VERBOSE", "TF_CPP_MIN_LOG_LEVEL", "SPARK_SUBMIT_OPTS", "SPARK_REMOTE",
        "PYTHIA_SPARK_MASTER")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.spark
def test_a_step_starting_spark_and_tensorflow_is_quiet_unless_verbose():
    pytest.importorskip("tensorflow")
    quiet = _run({}, STEP_SNIPPET)
    assert quiet.returncode == 0, quiet.stderr
    assert "spark 3" in quiet.stderr and "tf 1" in quiet.stderr  # real output gets through
    for noise in SPARK_NOISE + TF_NOISE:
        assert noise not in quiet.stderr, quiet.stderr
    loud = _run({"PYTHIA_VERBOSE": "1"}, STEP_SNIPPET)
    assert loud.returncode == 0, loud.stderr
    for noise in ("Using incubator modules", "Setting default log level", *_tf_noise_here()):
        assert noise in loud.stderr, loud.stderr


def test_filter_stream_drops_only_the_noise_and_drains_the_pipe(capfd):
    from pythia import quiet
    read, write = os.pipe()
    lines = [b"WARNING: Using incubator modules: jdk.incubator.vector\n",
             b"Setting default log level to \"WARN\".\n", b"ERROR Executor: a real error\n"]
    thread = quiet.filter_stream(os.fdopen(read, "rb"))
    with os.fdopen(write, "wb") as w:
        for _ in range(2000):  # more than a pipe's buffer: the reader must keep draining
            w.writelines(lines)
    thread.join(timeout=30)
    err = capfd.readouterr().err
    assert not thread.is_alive()
    assert err.count("ERROR Executor: a real error") == 2000
    assert "incubator" not in err and "default log level" not in err


def test_tensorflow_import_noise_is_dropped_and_verbose_keeps_it():
    pytest.importorskip("tensorflow")
    quiet = _run({})
    assert quiet.returncode == 0, quiet.stderr
    assert "tf 1" in quiet.stderr  # other stderr output still gets through
    assert "oneDNN" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr
    loud = _run({"PYTHIA_VERBOSE": "1"})
    assert loud.returncode == 0
    for noise in _tf_noise_here():
        assert noise in loud.stderr, loud.stderr


def test_install_points_spark_at_the_quiet_profile_and_respects_the_user(monkeypatch):
    from pythia import quiet
    monkeypatch.delenv("PYTHIA_VERBOSE", raising=False)
    monkeypatch.setenv("SPARK_SUBMIT_OPTS", "-Xss4m")
    monkeypatch.setenv("SPARK_LOCAL_IP", "10.0.0.5")
    quiet.install()
    opts = os.environ["SPARK_SUBMIT_OPTS"]
    assert opts.startswith("-Xss4m ") and "log4j2-quiet.properties" in opts
    assert os.path.exists(opts.split("file:", 1)[1])
    assert os.environ["SPARK_LOCAL_IP"] == "10.0.0.5"  # the user's own setting wins
    quiet.install()  # idempotent
    assert os.environ["SPARK_SUBMIT_OPTS"] == opts
    monkeypatch.setenv("PYTHIA_VERBOSE", "1")
    monkeypatch.setenv("SPARK_SUBMIT_OPTS", "")
    quiet.install()
    assert os.environ["SPARK_SUBMIT_OPTS"] == ""


def test_library_prints_are_dropped_unless_verbose(monkeypatch, capsys):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    with quiet.library_prints():
        print("Stop training because you reached max_epochs = 8")
    print("ours")
    assert capsys.readouterr().out == "ours\n"
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    with quiet.library_prints():
        print("Stop training because you reached max_epochs = 8")
    assert "max_epochs" in capsys.readouterr().out
