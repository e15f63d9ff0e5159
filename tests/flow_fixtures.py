"""Shared fixtures of the flow tests: a private Metaflow datastore per test module and a
``metaflow.Runner`` of DemoFlow in it (import them: ``from flow_fixtures import flow_env``)."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FLOW = str(REPO / "flows" / "demo_flow.py")


@pytest.fixture(scope="module")
def flow_env(tmp_path_factory):
    """A private datastore, data root and world cache shared by this module's runs."""
    root = tmp_path_factory.mktemp("flow")
    env = {
        "METAFLOW_USER": "pythia-test",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root),
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DEFAULT_METADATA": "local",
        "PYTHIA_DATA_ROOT": str(root / "data"),
        "PYTHIA_CACHE": str(root / "worlds"),
        "PYTHIA_HOURS_PER_TASK": "6",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    old_cwd = os.getcwd()
    os.chdir(root)  # the client finds the local datastore from the working folder too
    yield root, env
    os.chdir(old_cwd)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def runner(env, extra_env=None, config=None):
    """A Runner of DemoFlow in ``env``; ``config``: a TOML file instead of flows/pythia.toml."""
    from metaflow import Runner
    extra = {"config": [("config", str(config))]} if config else {}
    return Runner(FLOW, show_output=False, env={**env, **(extra_env or {})},
                  cwd=env["METAFLOW_DATASTORE_SYSROOT_LOCAL"], **extra)


def point_estimate_config(folder) -> Path:
    """flows/pythia.toml with the champion rule's noise test off ([evaluate] z_min = 0): a
    tiny world's few users give noisy margins, and flow tests that follow the blessed
    champion into the bundle need one."""
    text = (REPO / "flows" / "pythia.toml").read_text()
    assert "\nz_min = 2.0 " in text, "flows/pythia.toml: [evaluate] z_min moved"
    path = Path(folder) / "pythia-z0.toml"
    path.write_text(text.replace("\nz_min = 2.0 ", "\nz_min = 0.0 "))
    return path


def mount_tmpfs(folder: Path, size: str) -> Path:
    """A tmpfs of ``size`` (e.g. '1m') at ``folder``: a real small disk that fills up. Needs
    root and CAP_SYS_ADMIN; the test skips, saying why, without them. Unmount with
    ``umount_tmpfs``."""
    import subprocess
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    return folder


def umount_tmpfs(folder: Path) -> None:
    import subprocess
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)
