"""What the end step prints: where the results are, one line per region's champion and the
bundle slot it fills, and the commands that inspect the run (each works as printed).

The champion lines are short on purpose (the full reason is in ``pythia report`` and the card):
the model and its validation log-loss, the baselines it beat and the noise rule's z, the
previous champion when there was one, and where the region's bundle slot came from (this run,
kept from the previous run, or the baseline fallback). A region that is not blessed prints its
full reason, after the loud ``baseline_alarm`` block when a baseline won. Then each model
that is not a baseline against the best baseline per region (``evaluate.verdicts``), after
its own loud block when a model beats them nowhere.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from pythia import input_health, storage
from pythia.paths import join

_SLOT = {"fallback": "FALLBACK: nothing blessed and no previous champion, so the best baseline",
         "previous run": "kept from the previous run"}


def window_text(window: Any) -> str:
    """'first..last (test day)' of a run's window artifact; '-' when it has none."""
    if not isinstance(window, dict):
        return "-"
    train = window.get("train") or []
    test = window.get("test") or []
    val = window.get("validation") or []
    first = train[0] if train else (val[0] if val else "?")
    return f"{first}..{test[-1] if test else '?'} (test {','.join(test) or '?'})"


def baseline_alarm(champions: Any) -> list[str]:
    """The loud multi-line block naming the regions whose best candidate is a baseline (the
    champions rows' ``warning``), or [] when every region's model beats the baselines (and
    for runs from before the rule, whose champions have no ``warning`` column)."""
    if champions is None:
        return []
    table = pd.DataFrame(champions)
    if "warning" not in table.columns:
        return []
    texts = [w for w in table["warning"] if isinstance(w, str) and w]
    if not texts:
        return []
    bar = "!" * 88
    # the noise rule's warning: a win the validation day cannot tell from luck
    noise = sum(t.startswith("NOT CLEARLY BETTER") for t in texts)
    kinds = [f"NO MODEL BEATS THE BASELINES in {len(texts) - noise} region(s)"] * (
        len(texts) > noise)
    if noise:
        kinds.append(f"NO MODEL IS CLEARLY BETTER THAN THE BASELINES in {noise} region(s)")
    return [bar, f"WARNING: {'; '.join(kinds)}. They are NOT blessed and the bundle exports "
            "nothing new for them", "(the previous champion stays if it read this run's "
            "vocabularies; else the region is routed to the global model, and a global slot "
            "falls back to the best baseline):"] + [
        f"  {w}" for w in texts] + [bar]


def bundle_slots(bundle_path: str | None, pathspec_prefix: str) -> dict[str, str]:
    """Per bundle slot: '<kind>, <where it came from>' (this run when its origin starts with
    ``pathspec_prefix``, the previous run, the baseline fallback, or another run's pathspec);
    {} when the bundle cannot be read."""
    if not bundle_path:
        return {}
    try:
        doc = storage.read_json(join(bundle_path, "bundle.json"))
    except Exception:  # noqa: BLE001 - only a summary; the bundle path is printed anyway
        return {}
    out = {}
    for region, entry in (doc.get("models") or {}).items():
        origin = entry.get("origin") or ""
        where = ("this run" if origin.startswith(pathspec_prefix) else
                 _SLOT.get(origin, f"champion of {origin}" if origin else "champion"))
        blessed_in = str(entry.get("blessed_in") or "")
        if origin == "previous run" and blessed_in:
            day = f", test day {entry['blessed_date']}" if entry.get("blessed_date") else ""
            where += f" (blessed in {blessed_in.split('/end/')[0]}{day})"
        out[region] = f"{entry.get('kind')}, {where}"
    return out


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def champion_line(row: dict, slot: str | None) -> str:
    """'<region>: <champion> <val>, beat <baselines> (z vs the closest); bundle: <slot>'."""
    if not row.get("blessed"):
        head = (f"not blessed (best candidate: {row.get('model') or 'none'}): "
                f"{row.get('reason')}")
    else:
        val, z = _number(row, "val_logloss"), _number(row, "margin_z")
        head = f"{row.get('champion') or row.get('model')}"
        head += f" {val:.4f}" if val is not None else ""
        if row.get("baselines"):
            head += f", beat {row['baselines']}"
        if z is not None:
            head += f" (z {z:.2f} vs {str(row.get('margin_vs') or '').split(' vs ')[-1]})"
        prev, cur = _number(row, "previous_logloss"), _number(row, "current_logloss_on_same_rows")
        if prev is not None and cur is not None:
            head += (f"; test {cur:.4f} vs the previous champion's {prev:.4f} on "
                     f"{int(row.get('n_same_rows') or 0):,} rows")
    return f"  {row['region']:>8}: {head}" + (f"; bundle: {slot}" if slot else "")


def fold_regions(candidates: Any) -> list[str]:
    """The regions whose validation rows the run's candidates scored out of fold
    (``models.crossfit``: each candidate's ``fold_regions``); [] for an in-sample run or one
    trained before the record."""
    return sorted({r for c in candidates or [] for r in (c.get("fold_regions") or [])})


def summary_text(flow: Any, flow_name: str, run_id: str, flow_file: str) -> str:
    """What the end step prints: where the results are, the champions and their bundle slots,
    and commands that inspect them (each works as printed from the folder the run was started
    in)."""
    from pythia.evaluate.verdicts import build_model_verdicts, verdict_alarm, verdict_lines

    slots = bundle_slots(flow.bundle_path, f"{flow_name}/{run_id}/")
    candidates = getattr(flow, "candidates", None)
    try:  # evaluate's table (noise test); a run from before it: rebuilt on point estimates
        verdicts = getattr(flow, "model_verdicts", None)
        verdicts = (build_model_verdicts(getattr(flow, "metrics", None), candidates)
                    if verdicts is None else pd.DataFrame(verdicts))
        alarm = verdict_alarm(verdicts, candidates)
    except (KeyError, ValueError) as e:  # a resumed run's older artifacts: say it, go on
        verdicts, alarm = None, [f"  (no model verdicts: {e})"]
    held = float((getattr(flow, "split_manifest", None) or {}).get("holdout_users") or 0)
    on = f", on the {held:g} of the users held out of training" if held > 0 else ""
    folds = fold_regions(candidates)
    on += f", out of fold in {', '.join(folds)}" if folds else ""
    lines = [f"{flow_name} run {run_id} finished."] + baseline_alarm(flow.champions) + (
        alarm) + [
        f"  window: {window_text(flow.window)}",
        *(f"  {line}" for line in input_health.report_lines(
            getattr(flow, "quarantine", None), getattr(flow, "labels_manifest", None))),
        f"  reports: {flow.reports_path}",
        f"  bid-time bundle: {flow.bundle_path}",
        f"Champions (validation AgeGender log-loss{on}) and the bundle slot each fills "
        "(other regions are scored by the global slot):"]
    rows = pd.DataFrame(flow.champions).to_dict("records")
    lines += [champion_line(row, slots.pop(row["region"], None)) for row in rows]
    lines += [f"  {region:>8}: bundle: {slot}" for region, slot in sorted(slots.items())]
    if verdicts is not None and len(verdicts):
        lines += ["Models against the best baseline (validation AgeGender log-loss; gap = "
                  "model - baseline):"] + verdict_lines(verdicts)
    lines += ["Inspect:",
              f"  python {flow_file} card get {run_id}/evaluate report.html   "
              "(the report card, as a file)",
              f"  pythia report {run_id}",
              f"  pythia timings {run_id}",
              "  pythia runs",
              f"  pythia score --bundle {flow.bundle_path} < requests.jsonl"]
    pool = getattr(flow, "seed_pool", None)
    if pool is not None:  # the evaluate step pooled this run with runs of other seeds
        lines.append(f"  pythia seeds {' '.join(pool['runs']['run'])}   (this run and "
                     f"{len(pool['runs']) - 1} earlier of other seeds, pooled)")
    return "\n".join(lines)
