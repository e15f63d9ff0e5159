"""The library versions that decide a run's numbers, and what moved between two records of them.

The same ``--seed`` repeats a run exactly only on the same stack: a new numpy, TensorFlow or
Keras gives other models. The flow records ``versions()`` (the start step, each train candidate,
each saved model, the bundle); ``pythia report`` and ``pythia runs`` show it and what moved.
Versions come from the installed distributions' metadata: nothing heavy is imported.
"""
from __future__ import annotations

import importlib.metadata
import platform
from typing import Any, Mapping, Sequence

# the distributions whose versions decide a run's numbers, in the order the lines show them
# (importlib.metadata matches a name with "_" or "-" alike: "pytorch_tabnet" is pytorch-tabnet)
PACKAGES = ("numpy", "tensorflow", "keras", "torch", "pytorch_tabnet", "scikit-learn",
            "pandas", "pyarrow", "pyspark", "metaflow", "onnx", "onnxruntime")
# TensorFlow installs under any of these names; the first installed one is reported
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-intel")
KEYS = ("python",) + PACKAGES + ("machine",)
MISSING = "-"  # how a package that is not installed, or not recorded, reads
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


def versions() -> dict[str, str | None]:
    """This environment's stack: the Python version, the installed version of each of
    ``PACKAGES`` (None when not installed) and the machine (e.g. 'x86_64')."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        out[name] = _tensorflow() if name == "tensorflow" else _version(name)
    out["machine"] = platform.machine() or None
    return out


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


def report_lines(start_stack: Mapping | None, candidates: Sequence[Mapping] | None
                 ) -> list[str]:
    """What ``pythia report`` prints of a run's stack: 'stack: ...' (``run_stack``) and, when
    its train tasks ran on different stacks, a loud line per other stack naming what differs
    from the first candidate's; [] for a run from before the record."""
    stack = run_stack(start_stack, candidates)
    if not stack:
        return []
    lines = [f"stack: {stack_text(stack)}"]
    first = next((c for c in candidates or () if c.get("stack")), None)
    seen = [stack]
    for c in candidates or ():
        other = c.get("stack")
        if other and all(differences(s, other) for s in seen):
            seen.append(other)
            lines.append(f"WARNING: THE TRAIN TASKS RAN ON DIFFERENT STACKS: {_candidate(c)} "
                         f"vs {_candidate(first)}: {', '.join(differences(stack, other))} "
                         f"{SAME_SEED}")
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
