"""Quiet by default: library start-up noise off unless PYTHIA_VERBOSE=1."""
import os
import subprocess
import sys

import pytest

SNIPPET = ("from pythia import quiet; quiet.install(); tf = quiet.import_tensorflow(); "
           "import sys; print('tf', tf.constant(1).numpy(), file=sys.stderr)")


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHIA_VERBOSE",
                                                           "TF_CPP_MIN_LOG_LEVEL")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True,
                          env=env, timeout=300)


def test_tensorflow_import_noise_is_dropped_and_verbose_keeps_it():
    pytest.importorskip("tensorflow")
    quiet = _run({})
    assert quiet.returncode == 0, quiet.stderr
    assert "tf 1" in quiet.stderr  # other stderr output still gets through
    assert "oneDNN" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr
    loud = _run({"PYTHIA_VERBOSE": "1"})
    assert loud.returncode == 0 and "oneDNN custom operations" in loud.stderr


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
