"""``pythia`` (pythia/cli.py) as a user's shell runs it."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a command that prints far more than a pipe holds, as `report` does for a big run
_MANY_LINES = """
import sys
from pythia import cli
def flood(args):
    for i in range(200_000):
        print(f"line {i} of a long report")
cli._cmd_timings = flood
sys.exit(cli.main(["timings", "1"]))
"""


def test_a_reader_that_stops_early_gets_no_traceback():
    """`pythia timings RUN | head -1`: the reader closes the pipe; the command stops
    quietly (exit 1, nothing on stderr) instead of printing a BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-c", _MANY_LINES], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert first == b"line 0 of a long report\n"
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_root_without_a_user_name_gets_one_line_not_a_traceback(tmp_path):
    """Metaflow's client refuses root without a user name: `pythia runs` in a shell with no
    $METAFLOW_USER / $USER says so in one line with the fix (exit 2), as the flow's own
    refusal would need it too."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("METAFLOW_USER", "USER", "USERNAME", "SUDO_USER", "LOGNAME")}
    env.update(USER="root", METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path),
               PYTHONPATH=REPO)
    for argv in (["runs"], ["report"], ["seeds", "--latest", "2"]):
        proc = subprocess.run([sys.executable, "-m", "pythia.cli", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"pythia {argv[0]}: Metaflow could not tell your user name (root, and no "
            "$METAFLOW_USER, $USER or $USERNAME): export METAFLOW_USER=<your name> and run it "
            "again"], proc.stderr
