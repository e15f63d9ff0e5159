"""The library versions that decide a run's numbers, and what moved between two records of them.

The same ``--seed`` repeats a run exactly only on the same stack: a new numpy, TensorFlow or
Keras gives other models. The flow records ``versions()`` (the start step, each train candidate,
each saved model, the bundle); ``pythia report`` and ``pythia runs`` show it and what moved.
Versions come from the installed distributions' metadata: nothing heavy is imported.
The ``pythia`` entry is the code itself: a digest of the package's files (``code_version``),
so a run, a model and a bundle say which code made them, checkout or not, edited or not.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import platform
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

# the distributions whose versions decide a run's numbers, in the order the lines show them
# (importlib.metadata matches a name with "_" or "-" alike: "pytorch_tabnet" is pytorch-tabnet)
PACKAGES = ("numpy", "tensorflow", "keras", "torch", "pytorch_tabnet", "scikit-learn",
            "pandas", "pyarrow", "pyspark", "metaflow", "onnx", "onnxruntime")
# TensorFlow installs under any of these names; the first installed one is reported
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-intel")
KEYS = ("python", "pythia") + PACKAGES + ("machine", "cpu")
# the instruction sets TensorFlow's (oneDNN's) and NumPy's kernels pick by: floats round
# otherwise on another set, so one stack, code and seed give other models on another CPU (seen:
# the default run's global z -3.58 on one machine, -3.82 on an AVX2-only AMD EPYC). Recorded
# and shown, but not a reason to refuse pooling seeds or to warn of train tasks on other nodes:
# a cluster's nodes differ, and the rounding is noise of the seeds' kind
HARDWARE = ("cpu",)
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
CPUINFO = "/proc/cpuinfo"
# the package's files that are not code but that it reads (pythia/data): Metaflow's code
# package holds only .py files unless told (pythia.code_package ships these)
DATA_SUFFIXES = (".json", ".properties")
# the files whose bytes make ``code_version``: the package's code and data, and the flow
# (flows/*.py in a checkout; demo_flow.py beside the package in Metaflow's code package);
# not tests, docs or the deploy-time config (each run stores its own)
CODE_SUFFIXES = (".py",) + DATA_SUFFIXES
FLOW_FILE = "demo_flow.py"
CODE_DIGITS = 12
MISSING = "-"  # how a package that is not installed, or not recorded, reads
# the exact releases `make setup` and CI install (a checkout's root, beside the package;
# `make lock` writes it): the stack the README's figures were measured on
LOCK_FILE = "constraints.txt"
LOCK_NAMED = 5  # how many differing releases the start step's line names
SAME_SEED = "(the same seed may not give the same models)"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tensorflow() -> str | None:
    """The installed TensorFlow's version, naming its distribution when not plain tensorflow
    (e.g. '2.21.0 (tensorflow-cpu)'); None when none is installed."""
    for distribution in TENSORFLOW_DISTRIBUTIONS:
        version = _version(distribution)
        if version is not None:
            return version if distribution == "tensorflow" else f"{version} ({distribution})"
    return None


def code_files(package: Path) -> list[tuple[str, Path]]:
    """(name, path) of the files ``code_version`` reads, in name order: 'pythia/…' for the
    package's ``CODE_SUFFIXES`` files (byte code aside), 'flows/…' for the flow's."""
    files = [(f"pythia/{f.relative_to(package).as_posix()}", f) for f in package.rglob("*")
             if f.suffix in CODE_SUFFIXES and f.is_file() and "__pycache__" not in f.parts]
    for flows in (package.parent / "flows", package.parent):  # a checkout; a code package
        if (flows / FLOW_FILE).is_file():
            files += [(f"flows/{f.name}", f) for f in flows.glob("*.py") if f.is_file()]
            break
    return sorted(files)


def code_version(package: str | Path | None = None) -> str | None:
    """The first ``CODE_DIGITS`` hex digits of a SHA-256 over the pythia package's files
    (``CODE_SUFFIXES``; ``package``: its folder, default this one) and the flow's ``*.py``
    (``flows/`` beside the package in a checkout, or the package's own folder in Metaflow's
    code package, where ``FLOW_FILE`` sits beside ``pythia/``): each file's path and bytes,
    in path order. The same code gives the same digest on any machine, in a checkout, an
    install or a remote task's code package, and any edit, committed or not, gives another;
    None when the folder cannot be read."""
    if package is None:
        return _own_code_version()
    return _code_version(str(Path(package).resolve()))


@functools.cache  # this process's own code: read once (a task's code does not change under it)
def _own_code_version() -> str | None:
    return _code_version(str(Path(__file__).resolve().parent))


def _code_version(package: str) -> str | None:
    digest = hashlib.sha256()
    try:
        files = code_files(Path(package))
        for name, path in files:
            data = path.read_bytes()
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
    except OSError:
        return None
    return digest.hexdigest()[:CODE_DIGITS] if files else None


def versions() -> dict[str, str | None]:
    """This environment's stack: the Python version, this code's ``code_version`` (key
    ``pythia``), the installed version of each of ``PACKAGES`` (None when not installed) and
    the machine (e.g. 'x86_64')."""
    out: dict[str, str | None] = {"python": platform.python_version(),
                                  "pythia": code_version()}
    for name in PACKAGES:
        out[name] = _tensorflow() if name == "tensorflow" else _version(name)
    out["machine"] = platform.machine() or None
    out["cpu"] = _cpu()
    return out


def cpu_text(cpuinfo: str) -> str | None:
    """'AMD EPYC, family 23 model 49, avx2 fma': the first processor of a /proc/cpuinfo text,
    its model name, family and model, and which of ``SIMD_FLAGS`` it has ('no avx2' when
    none); None when the text names no processor."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: they are alike
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or fields.get("vendor_id")
    if not name:
        return None
    flags = set(fields.get("flags", "").split())
    simd = " ".join(f for f in SIMD_FLAGS if f in flags) or "no avx2"
    family = f", family {fields['cpu family']} model {fields.get('model', '?')}" \
        if "cpu family" in fields else ""
    return f"{' '.join(name.split())}{family}, {simd}"


@functools.cache
def _cpu() -> str | None:
    """This machine's ``cpu_text``; ``platform.processor()`` where there is no /proc/cpuinfo."""
    try:
        with open(CPUINFO) as f:
            return cpu_text(f.read())
    except OSError:
        return platform.processor() or None


def _text(value: Any) -> str:
    return MISSING if value is None else str(value)


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One 'name old -> new' text per key whose value differs (e.g. 'numpy 2.4.5 -> 2.4.6'),
    in ``KEYS`` order, then other keys sorted. A key missing on one side, or None (not
    installed), reads '-'; [] when the two stacks agree."""
    keys = [k for k in KEYS if k in old or k in new]
    keys += sorted((set(old) | set(new)) - set(KEYS))
    return [f"{k} {_text(old.get(k))} -> {_text(new.get(k))}" for k in keys
            if _text(old.get(k)) != _text(new.get(k))]


def shared_differences(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None,
                       ignore: Sequence[str] = ()) -> list[str]:
    """``differences`` over the keys both stacks recorded (a run from before a key was
    recorded, e.g. ``pythia``, is not held against it), but ``ignore``'s (e.g. ``HARDWARE``);
    [] when either is missing."""
    if not a or not b:
        return []
    both = (set(a) & set(b)) - set(ignore)
    return differences({k: a[k] for k in both}, {k: b[k] for k in both})


def git_text(run: Any) -> str | None:
    """'git 6e30284ab1c2 on main, with uncommitted changes': the commit Metaflow recorded for
    a run's start step (its ``git-info`` metadata; ``run`` a Metaflow ``Run`` or its pathspec
    'DemoFlow/123'), None when it recorded none (not run from a git checkout, or an older
    Metaflow)."""
    try:
        if isinstance(run, str):
            from metaflow import Run

            run = Run(run, _namespace_check=False)  # any user's run, as pythia.runs opens
        info = json.loads(run["start"].task.metadata_dict.get("git-info") or "{}")
    except Exception:  # noqa: BLE001 - metadata is best effort: a report line, not a check
        return None
    if not isinstance(info, dict) or not info.get("commit_sha"):
        return None
    text = f"git {str(info['commit_sha'])[:CODE_DIGITS]}"
    if info.get("branch_name"):
        text += f" on {info['branch_name']}"
    if info.get("has_uncommitted_changes"):
        text += ", with uncommitted changes"
    return text


def stack_text(stack: Mapping[str, Any]) -> str:
    """'python 3.11.7, numpy 2.4.6, ..., machine x86_64': the installed entries, in ``KEYS``
    order, then other keys sorted."""
    keys = [k for k in KEYS if k in stack] + sorted(set(stack) - set(KEYS))
    return ", ".join(f"{k} {stack[k]}" for k in keys if stack[k] is not None)


def _candidate(c: Mapping[str, Any]) -> str:
    return f"{c.get('model')}/{c.get('region')}#{c.get('config_id', 0)}"


def run_stack(start_stack: Mapping | None, candidates: Sequence[Mapping] | None
              ) -> Mapping | None:
    """The stack a run's models were trained with: its first train candidate's, else the
    start step's; None for a run from before the record."""
    for c in candidates or ():
        if c.get("stack"):
            return c["stack"]
    return start_stack or None


def report_lines(start_stack: Mapping | None, candidates: Sequence[Mapping] | None,
                 git: str | None = None) -> list[str]:
    """What ``pythia report`` prints of a run's stack: 'stack: ...' (``run_stack``), 'code:
    <git>' when given (``git_text``), a loud line when the start step's code digest is not
    the train tasks' (a resume after an edit), and, when its train tasks ran on different
    stacks (a resume after the code or the libraries changed), a loud line per other stack
    naming what differs from the first candidate's (the CPU aside: a plain line names the
    kinds when they differ, ``HARDWARE``); [] (or the code line) for a run from before the
    record."""
    stack = run_stack(start_stack, candidates)
    lines = [f"code: {git}"] if git else []
    if not stack:
        return lines
    lines.insert(0, f"stack: {stack_text(stack)}")
    first = next((c for c in candidates or () if c.get("stack")), None)
    code = [(s or {}).get("pythia") for s in (start_stack, first and first["stack"])]
    if all(code) and code[0] != code[1]:  # the libraries may differ (a remote train step)
        lines.append(f"WARNING: THE START STEP AND THE TRAIN TASKS RAN ON DIFFERENT CODE: "
                     f"pythia {code[0]} -> {code[1]} (a resume after the code changed: the "
                     f"steps it cloned kept the origin run's outputs) {SAME_SEED}")
    seen = [stack]
    for c in candidates or ():
        other = c.get("stack")
        if other and all(shared_differences(s, other, HARDWARE) for s in seen):
            seen.append(other)
            lines.append(f"WARNING: THE TRAIN TASKS RAN ON DIFFERENT STACKS: {_candidate(c)} "
                         f"vs {_candidate(first)}: "
                         f"{', '.join(shared_differences(stack, other, HARDWARE))} "
                         f"{SAME_SEED}")
    cpus = sorted({str(c["stack"].get("cpu")) for c in candidates or ()
                   if (c.get("stack") or {}).get("cpu")})
    if len(cpus) > 1:  # nodes of a cluster: said, not loud (HARDWARE)
        lines.append(f"cpu: the train tasks ran on {len(cpus)} kinds: {'; '.join(cpus)}")
    return lines


def change_notes(stacks: Sequence[tuple[str, Mapping | None]]) -> dict[str, str]:
    """For ``pythia runs``: given (run id, ``run_stack``) newest first, the line of each run
    whose stack differs from the next older one's, by run id (none when either has no stack).
    """
    notes = {}
    for (run_id, new), (older_id, old) in zip(stacks, stacks[1:]):
        moved = differences(old, new) if new and old else []
        if moved:
            notes[run_id] = (f"  stack differs from run {older_id}: {', '.join(moved)} "
                             f"{SAME_SEED}")
    return notes


def read_lock(path: str | Path) -> dict[str, str]:
    """A constraints file's pins, {canonical project name: version}: each 'name==version'
    line, comments, blanks and anything else (a marker, a URL) aside."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in Path(path).read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*(#.*)?",
                             line)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def _public(version: str) -> str:
    """'2.13.0+cpu' -> '2.13.0': a local build label is not another release."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version).public
    except InvalidVersion:
        return version


def lock_differences(lock: str | Path | None = None, missing: bool = False) -> list[str]:
    """'tensorflow-cpu 2.20.0 (lock 2.21.0)' for each release of the lock file (default: the
    checkout's ``LOCK_FILE``) that this environment has at another version, and with
    ``missing`` each it lacks ('not installed': an install without the test extra lacks
    pytest, and that moves no figure), in name order; [] when they agree, or when there is no
    lock file (an installed package, a remote task's code package)."""
    path = Path(lock) if lock is not None else Path(__file__).resolve().parent.parent / LOCK_FILE
    if not path.is_file():
        return []
    out = []
    for name, pinned in sorted(read_lock(path).items()):
        installed = _version(name)
        if installed is None:
            if missing:
                out.append(f"{name} not installed (lock {pinned})")
        elif _public(installed) != _public(pinned):
            out.append(f"{name} {installed} (lock {pinned})")
    return out


def lock_line(lock: str | Path | None = None) -> str | None:
    """The start step's line when this environment is not the lock's (``lock_differences``):
    how many releases differ, the first ``LOCK_NAMED`` of them and what to do; None when it is
    the lock's or there is none."""
    moved = lock_differences(lock)
    if not moved:
        return None
    more = f" and {len(moved) - LOCK_NAMED} more" if len(moved) > LOCK_NAMED else ""
    return (f"stack: {len(moved)} release(s) differ from {LOCK_FILE}, the stack the README's "
            f"figures were measured on: {'; '.join(moved[:LOCK_NAMED])}{more} {SAME_SEED}; "
            f"`make setup` (pip install -c {LOCK_FILE} -e .) installs the lock's")
