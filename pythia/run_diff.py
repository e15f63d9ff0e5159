"""`pythia diff [OLD] [NEW]`: what moved between two runs, read through the Metaflow client.

A day's numbers move for four reasons: other data (the window, the rows per split), other
settings (the flow's Parameters and ``flows/pythia.toml``: ``RunParams``), other code or
libraries (``pythia.stack``), or the fits' luck (the seed). ``print_diff`` puts them side by
side with each region's champion and its natural-test-day scores (``what_moved`` holds the
pure part).
"""
from __future__ import annotations

import itertools
import sys
from typing import Any, Sequence, TextIO

from pythia import input_health, stack
from pythia.what_moved import moved_settings, rows_line


def _pick(flow: Any, flow_name: str, run_ids: Sequence[str]) -> tuple[Any, Any]:
    """(older, newer) runs: the two named; one named and the run listed after it (the next
    older one); none named: the two newest."""
    from pythia.runs import open_run

    if len(run_ids) > 2:
        raise ValueError(f"diff compares two runs, got {len(run_ids)}: pythia diff [OLD] [NEW]")
    named = []
    for run_id in run_ids:
        run = open_run(flow_name, run_id)
        if run is None:
            raise ValueError(f"run {flow_name}/{run_id} not found: `pythia runs` lists them")
        named.append(run)
    if len(named) == 2:
        return named[0], named[1]
    if not named:
        newest = list(itertools.islice(flow.runs(), 2))  # newest first
        if len(newest) < 2:
            raise ValueError(f"{flow_name} has {len(newest)} run(s): diff needs two")
        return newest[1], newest[0]
    runs = iter(flow.runs())
    for run in runs:
        if str(run.id) == str(named[0].id):
            older = next(runs, None)
            if older is None:
                break
            return older, named[0]
    raise ValueError(f"no run before {named[0].pathspec}: name the two runs to compare")


def print_diff(run_ids: Sequence[str] = (), flow_name: str = "DemoFlow",
               out: TextIO | None = None) -> int:
    """Print what moved between two runs (``_pick``): status, window, seed, settings, stack,
    code, world, quarantined impressions, rows per split, and each region's champion with its
    natural-test-day AgeGender log-loss and macro-F1. Returns 0, or 1 when the flow has no
    runs here."""
    import pandas as pd

    from pythia.runs import _artifact, _open_flow, run_status, summarize_run
    from pythia.run_summary import window_text

    out = out or sys.stdout
    flow = _open_flow(flow_name, out)
    if flow is None:
        return 1
    old, new = _pick(flow, flow_name, run_ids)

    def pair(name: str, text=lambda v: "-" if v is None else str(v)) -> tuple[str, str]:
        return text(_artifact(old, name)), text(_artifact(new, name))

    def line(label: str, a: str, b: str) -> str:
        return f"{label}: the same, {a}" if a == b else f"{label}: {a} -> {b}"

    print(f"{old.pathspec} -> {new.pathspec}", file=out)
    print(line("status", run_status(old), run_status(new)), file=out)
    print(line("window", *pair("window", window_text)), file=out)
    p_old, p_new = _artifact(old, "params"), _artifact(new, "params")
    print(line("seed", *[str(getattr(p, "seed", "-")) for p in (p_old, p_new)]), file=out)
    moved = moved_settings(p_old, p_new)
    if p_old is None or p_new is None:
        print("settings: not recorded by both runs", file=out)
    else:
        print("settings: the same" if not moved else "settings:", file=out)
        for d in moved:
            print(f"  {d}", file=out)
    stacks = [stack.run_stack(_artifact(r, "stack"), _artifact(r, "candidates"))
              for r in (old, new)]
    lib = stack.shared_differences(*stacks)
    print("stack: not recorded by both runs" if not all(stacks) else
          "stack: the same" if not lib else f"stack: {', '.join(lib)} {stack.SAME_SEED}",
          file=out)
    gits = [stack.git_text(r) or "-" for r in (old, new)]
    if gits != ["-", "-"]:
        print(line("code", *gits), file=out)
    world = pair("world_fingerprint")
    if world != ("-", "-"):
        kinds = ["a synthetic world" if w != "-" else "no synthetic world" for w in world]
        print("world: the same" if world[0] == world[1] else
              "world: another synthetic world (regenerated, or another preset or seed)"
              if "-" not in world else f"world: {kinds[0]} -> {kinds[1]}", file=out)
    quarantined = [input_health.quarantined_text(_artifact(r, "quarantine")) for r in (old, new)]
    if quarantined != ["-", "-"]:
        print(line("quarantined", *quarantined), file=out)
    rows = rows_line(_artifact(old, "split_manifest"), _artifact(new, "split_manifest"))
    if rows:
        print(rows, file=out)
    a, b = (pd.DataFrame(summarize_run(r, p)) for r, p in ((old, p_old), (new, p_new)))
    keep = ["region", "champion", "ll_ag", "f1_ag"]
    table = a.reindex(columns=keep).merge(b.reindex(columns=keep), on="region", how="outer",
                                          suffixes=("_old", "_new"), sort=False)
    if table["region"].ne("-").any():
        table = table[table["region"] != "-"].sort_values(  # global first, then by name
            "region", key=lambda r: r.ne("global"), kind="stable")
        table["ll_change"] = (pd.to_numeric(table["ll_ag_new"], errors="coerce")
                              - pd.to_numeric(table["ll_ag_old"], errors="coerce"))
        print(f"\nChampions (natural test day, provider labels; ll_ag: AgeGender log-loss, "
              f"f1_ag: its macro-F1; _old: run {old.id}, _new: run {new.id})", file=out)
        with pd.option_context("display.width", 250, "display.max_columns", 20,
                               "display.float_format", "{:.4f}".format):
            print(table.fillna("").to_string(index=False), file=out)
    return 0
