"""The recorded library stack (``pythia.stack``): what it reads, what it says moved, and how
``pythia runs`` / ``pythia report`` show it for (fake) runs."""
from __future__ import annotations

import importlib.metadata
import io
import platform
import subprocess
import sys

import pandas as pd

from pythia import runs, stack

OLD = {"python": "3.11.7", "numpy": "2.4.5", "keras": "3.15.0", "machine": "x86_64"}
NEW = dict(OLD, numpy="2.4.6", keras="3.15.1")


def test_versions_reads_the_installed_metadata():
    got = stack.versions()
    assert list(got) == list(stack.KEYS)
    assert got["numpy"] == importlib.metadata.version("numpy")
    assert got["python"] == platform.python_version()
    assert got["machine"] == platform.machine()


def test_versions_imports_none_of_the_packages_it_reports():
    heavy = ("numpy", "pandas", "tensorflow", "keras", "torch", "sklearn", "pyspark", "pyarrow")
    code = ("import sys\nfrom pythia import stack\nstack.versions()\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _installed(monkeypatch, versions):
    """Make ``importlib.metadata.version`` know exactly ``versions``."""
    def version(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]
    monkeypatch.setattr(importlib.metadata, "version", version)


def test_versions_says_none_for_a_missing_package_and_names_tensorflows_distribution(
        monkeypatch):
    _installed(monkeypatch, {"numpy": "2.4.6", "tensorflow-cpu": "2.21.0"})
    got = stack.versions()
    assert got["numpy"] == "2.4.6" and got["onnx"] is None and got["torch"] is None
    assert got["tensorflow"] == "2.21.0 (tensorflow-cpu)"
    _installed(monkeypatch, {"tensorflow": "2.20.0", "tensorflow-intel": "2.20.0"})
    assert stack.versions()["tensorflow"] == "2.20.0"  # plain tensorflow: no name added
    _installed(monkeypatch, {"tensorflow-intel": "2.15.0"})
    assert stack.versions()["tensorflow"] == "2.15.0 (tensorflow-intel)"
    _installed(monkeypatch, {})
    assert stack.versions()["tensorflow"] is None


def test_differences_name_what_moved_in_a_stable_order():
    assert stack.differences(OLD, dict(OLD)) == []
    assert stack.differences(OLD, NEW) == ["numpy 2.4.5 -> 2.4.6", "keras 3.15.0 -> 3.15.1"]
    assert stack.differences(NEW, OLD) == ["numpy 2.4.6 -> 2.4.5", "keras 3.15.1 -> 3.15.0"]
    # a key missing on one side reads '-'; so does None (not installed): they agree
    assert stack.differences({"numpy": "2.4.5"}, {"numpy": "2.4.5", "torch": "2.1"}) == [
        "torch - -> 2.1"]
    assert stack.differences({"torch": None}, {}) == []
    # keys of ``KEYS`` in its order (python first, machine last), then others sorted
    assert stack.differences({"machine": "arm64", "zz": "1", "numpy": "1"},
                             {"machine": "x86_64", "aa": "1", "python": "3.12"}) == [
        "python - -> 3.12", "numpy 1 -> -", "machine arm64 -> x86_64", "aa - -> 1",
        "zz 1 -> -"]


class _Artifact:
    def __init__(self, data):
        self.data = data


class _FakeRun:
    """What print_runs and print_report read of a Metaflow Run: its id, status and the end
    task's artifacts."""

    def __init__(self, run_id, **artifacts):
        self.id, self.pathspec = run_id, f"DemoFlow/{run_id}"
        self.successful, self.created_at, self.finished_at = True, None, None
        self.end_task = {k: _Artifact(v) for k, v in artifacts.items()}


def _two_regions():
    """Artifacts that give a run two rows in ``pythia runs`` (nothing blessed)."""
    return {"headline": pd.DataFrame({"eval_region": ["global"], "champion": [True]}),
            "champions": pd.DataFrame({"region": ["global", "EU"], "champion": [None, None],
                                       "blessed": [False, False]})}


def _print_runs(monkeypatch, fake_runs):
    monkeypatch.setattr(runs, "open_flow", lambda name: list(fake_runs))  # newest first
    out = io.StringIO()
    assert runs.print_runs(out=out) == 0
    return out.getvalue().splitlines()


def test_runs_say_under_a_run_what_moved_since_the_older_one(monkeypatch):
    # run 3 trained on NEW (its candidates), run 2 recorded OLD at start only, run 1 nothing
    lines = _print_runs(monkeypatch, [
        _FakeRun("3", candidates=[{"model": "mlp", "stack": NEW}], stack=OLD, **_two_regions()),
        _FakeRun("2", stack=OLD), _FakeRun("1")])
    note = ("  stack differs from run 2: numpy 2.4.5 -> 2.4.6, keras 3.15.0 -> 3.15.1 "
            "(the same seed may not give the same models)")
    assert [ln.split()[0] for ln in lines[1:]] == ["3", "3", "stack", "2", "1"]
    assert lines[3] == note  # under run 3's last row
    assert sum("stack differs" in ln for ln in lines) == 1  # run 1 has no record: no line


def test_runs_say_nothing_when_the_stacks_agree_or_were_not_recorded(monkeypatch):
    same = _print_runs(monkeypatch, [_FakeRun("2", candidates=[{"stack": OLD}]),
                                     _FakeRun("1", stack=dict(OLD, onnx=None))])
    old = _print_runs(monkeypatch, [_FakeRun("2", stack=NEW), _FakeRun("1")])
    assert len(same) == len(old) == 3
    assert not any("stack" in ln for ln in same + old)


def _report(monkeypatch, **artifacts):
    monkeypatch.setattr(runs, "open_flow", lambda name: object())
    monkeypatch.setattr(runs, "open_run", lambda name, rid: _FakeRun("42", **artifacts))
    out = io.StringIO()
    assert runs.print_report("42", out=out) == 1  # no headline: it stops after the header
    return out.getvalue().splitlines()


def test_report_prints_the_stack_and_loudly_when_train_tasks_differ(monkeypatch):
    cands = [{"model": "mlp", "region": "global", "config_id": 0, "stack": NEW},
             {"model": "mlp", "region": "EU", "config_id": 0, "stack": NEW},
             {"model": "gbdt", "region": "global", "config_id": 0, "stack": OLD},
             {"model": "gbdt", "region": "EU", "config_id": 0, "stack": OLD}]
    lines = _report(monkeypatch, stack=OLD, candidates=cands)
    assert lines[1] == ("stack: python 3.11.7, numpy 2.4.6, keras 3.15.1, machine x86_64")
    assert lines[2:-1] == [  # one line per other stack, against the first candidate's
        "WARNING: THE TRAIN TASKS RAN ON DIFFERENT STACKS: gbdt/global#0 vs mlp/global#0: "
        "numpy 2.4.6 -> 2.4.5, keras 3.15.1 -> 3.15.0 (the same seed may not give the same "
        "models)"]
    # the train tasks agree: the stack line alone; no candidate stacks: the start step's
    assert _report(monkeypatch, stack=OLD, candidates=cands[:2])[1:-1] == [
        "stack: python 3.11.7, numpy 2.4.6, keras 3.15.1, machine x86_64"]
    assert _report(monkeypatch, stack=dict(OLD, torch=None), candidates=[{"model": "mlp"}]
                   )[1:-1] == ["stack: python 3.11.7, numpy 2.4.5, keras 3.15.0, machine x86_64"]
    # a run from before the record: no stack line
    assert not any("stack" in ln for ln in _report(monkeypatch, candidates=[{"model": "mlp"}]))


def _package(root, files):
    """A package folder ``root/pythia`` holding ``files`` (relative path -> text)."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pythia"


def test_code_version_is_a_digest_of_the_code_files_and_nothing_else(tmp_path):
    files = {"pythia/__init__.py": "", "pythia/a.py": "x = 1\n", "pythia/data/geo.json": "{}"}
    a = stack.code_version(_package(tmp_path / "a", files))
    assert len(a) == stack.CODE_DIGITS and int(a, 16) >= 0
    # the same files elsewhere, with byte code, notes and tests beside them: the same code
    b = _package(tmp_path / "b", dict(files, **{"pythia/notes.md": "hello",
                                                "tests/test_a.py": "assert 0"}))
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "a.cpython-311.py").write_text("compiled")
    assert stack.code_version(b) == a
    # any edit, a file renamed or added, or a flow beside the package: another digest
    edits = [dict(files, **{"pythia/a.py": "x = 2\n"}),
             dict(files, **{"pythia/data/geo.json": "{ }"}),
             {"pythia/__init__.py": "", "pythia/b.py": "x = 1\n", "pythia/data/geo.json": "{}"},
             dict(files, **{"pythia/c.py": ""}),
             dict(files, **{"flows/demo_flow.py": "# the flow\n"})]
    digests = {stack.code_version(_package(tmp_path / f"e{i}", f)) for i, f in enumerate(edits)}
    assert len(digests) == len(edits) and a not in digests
    # the flow in a checkout (flows/) and in Metaflow's code package (beside pythia/): one code
    checkout = stack.code_version(_package(tmp_path / "g", dict(
        files, **{"flows/demo_flow.py": "# the flow\n", "flows/pythia.toml": "[x]"})))
    package = stack.code_version(_package(tmp_path / "h", dict(
        files, **{"demo_flow.py": "# the flow\n"})))
    assert checkout == package != a
    # a flows folder without the flow is not ours; an empty or missing folder has no digest
    other = _package(tmp_path / "f", dict(files, **{"flows/other.py": "# not ours\n"}))
    assert stack.code_version(other) == a
    (tmp_path / "empty" / "pythia").mkdir(parents=True)
    assert stack.code_version(tmp_path / "empty" / "pythia") is None
    assert stack.code_version(tmp_path / "missing") is None


def test_the_stack_records_this_code(tmp_path):
    got = stack.versions()["pythia"]
    assert got == stack.code_version() and len(got) == stack.CODE_DIGITS
    assert got == stack.code_version(stack.Path(stack.__file__).parent)


def test_shared_differences_hold_only_what_both_runs_recorded():
    assert stack.shared_differences(OLD, NEW) == stack.differences(OLD, NEW)
    assert stack.shared_differences(dict(OLD, pythia="a1"), OLD) == []  # before the record
    assert stack.shared_differences(dict(OLD, pythia="a1"), dict(NEW, pythia="b2")) == [
        "pythia a1 -> b2", "numpy 2.4.5 -> 2.4.6", "keras 3.15.0 -> 3.15.1"]
    assert stack.shared_differences(None, NEW) == stack.shared_differences(OLD, {}) == []


class _Task:
    def __init__(self, metadata):
        self.metadata_dict = metadata


class _GitRun(_FakeRun):
    """A fake run whose start task carries Metaflow's ``git-info`` metadata."""

    def __init__(self, run_id, git_info, **artifacts):
        super().__init__(run_id, **artifacts)
        self.steps = {"start": type("S", (), {"task": _Task(git_info)})()}

    def __getitem__(self, step):
        return self.steps[step]


def test_git_text_reads_metaflows_record_of_the_start_step():
    sha = "6e30284ab1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6"
    info = {"git-info": '{"branch_name": "main", "commit_sha": "%s"}' % sha}
    assert stack.git_text(_GitRun("1", info)) == "git 6e30284ab1c2 on main"
    dirty = {"git-info": '{"commit_sha": "%s", "has_uncommitted_changes": true}' % sha}
    assert stack.git_text(_GitRun("1", dirty)).startswith(
        "git 6e30284ab1c2, with uncommitted changes")
    # no record (not a checkout), a broken one, no start step, or no run at all: None
    for run in (_GitRun("1", {}), _GitRun("1", {"git-info": "{not json"}),
                _GitRun("1", {"git-info": "[]"}), _FakeRun("1"), "NoSuchFlow/1"):
        assert stack.git_text(run) is None


def test_report_prints_the_commit_and_a_resume_on_other_code_loudly(monkeypatch):
    sha = "6e30284ab1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6"
    info = {"git-info": '{"branch_name": "main", "commit_sha": "%s"}' % sha}
    # a resume after an edit: the cloned train task ran on code a1, the re-run one on b2
    cands = [{"model": "mlp", "region": "global", "stack": dict(OLD, pythia="a1")},
             {"model": "tabnet", "region": "global", "stack": dict(OLD, pythia="b2")}]
    monkeypatch.setattr(runs, "open_flow", lambda name: object())
    monkeypatch.setattr(runs, "open_run", lambda name, rid: _GitRun(
        "42", info, stack=OLD, candidates=cands))
    out = io.StringIO()
    runs.print_report("42", out=out)
    lines = out.getvalue().splitlines()
    assert lines[1] == "stack: python 3.11.7, pythia a1, numpy 2.4.5, keras 3.15.0, machine x86_64"
    assert lines[2] == "code: git 6e30284ab1c2 on main"
    assert lines[3] == ("WARNING: THE TRAIN TASKS RAN ON DIFFERENT STACKS: tabnet/global#0 vs "
                        "mlp/global#0: pythia a1 -> b2 (the same seed may not give the same "
                        "models)")
    # a resume after an edit that re-ran every train task: the start step's code is not theirs
    fits = [dict(c, stack=dict(OLD, pythia="b2")) for c in cands]
    assert stack.report_lines(dict(OLD, pythia="a1"), fits)[1:] == [
        "WARNING: THE START STEP AND THE TRAIN TASKS RAN ON DIFFERENT CODE: pythia a1 -> b2 (a "
        "resume after the code changed: the steps it cloned kept the origin run's outputs) "
        "(the same seed may not give the same models)"]
    # the same code (other libraries: a remote train step), or no digest on one side: nothing
    assert stack.report_lines(dict(NEW, pythia="b2"), fits)[1:] == []
    assert stack.report_lines(OLD, fits)[1:] == []


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC   7B12
flags\t\t: fpu sse sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: another
"""


def test_cpu_text_names_the_model_and_the_instruction_sets_kernels_pick_by():
    assert stack.cpu_text(CPUINFO) == "AMD EPYC 7B12, family 23 model 49, avx2 fma"
    intel = CPUINFO.replace("avx2 bmi2", "avx2 avx512f avx512_vnni amx_tile")
    assert stack.cpu_text(intel).endswith("avx2 fma avx512f avx512_vnni amx_tile")
    assert stack.cpu_text("processor\t: 0\nvendor_id\t: ARM\nflags\t: neon\n") == "ARM, no avx2"
    assert stack.cpu_text("") is None
    assert stack.versions()["cpu"] == stack._cpu()  # recorded with every stack


def test_the_cpu_is_shown_but_neither_pools_apart_nor_warns(monkeypatch):
    a, b = dict(NEW, cpu="AMD EPYC, avx2 fma"), dict(NEW, cpu="Intel Xeon, avx2 fma avx512f")
    assert stack.differences(a, b) == ["cpu AMD EPYC, avx2 fma -> Intel Xeon, avx2 fma avx512f"]
    assert stack.shared_differences(a, b) == stack.differences(a, b)  # pythia diff, runs
    assert stack.shared_differences(a, b, stack.HARDWARE) == []  # pythia seeds pools them
    cands = [{"model": "mlp", "region": "global", "config_id": 0, "stack": a},
             {"model": "mlp", "region": "EU", "config_id": 0, "stack": b}]
    lines = _report(monkeypatch, stack=a, candidates=cands)[1:-1]
    assert not any("WARNING" in ln for ln in lines)
    assert lines[-1] == "cpu: the train tasks ran on 2 kinds: AMD EPYC, avx2 fma; Intel Xeon, " \
        "avx2 fma avx512f"
