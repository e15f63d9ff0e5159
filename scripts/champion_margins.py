"""Champion vs baselines with paired standard errors, per eval region, from a finished run.

For one DemoFlow run (default: the latest successful one in the current Metaflow datastore),
reads the evaluate step's artifacts (candidates, champions, metrics, split manifest) and every
candidate's predictions, and prints per eval region and target (AgeGender, gender, age):

* rows, the exact posterior's log-loss on the same rows (synthetic worlds: the Bayes gauge);
* the champion (model/candidate region) and each baseline (``models.BASELINE_MODELS``: the
  class prior and logreg) as the champion rule would pick it for the region (lowest
  natural-weighted validation log-loss among that model's global and regional candidates),
  with the log-loss on the chosen split;
* per baseline, the paired difference champion - baseline (mean of the per-row log-loss
  differences), its standard error over rows and its standard error over users (impressions of
  one user are correlated; the cluster-robust SE is the honest one), and z = diff / user SE.

``--split validation`` scores the validation day instead (natural-weighted, as the champion
rule does: the weighted mean and its linearised SE), so that a change can be chosen on
validation with the same yardstick. ``--candidate MODEL/REGION`` replaces the champion by
another candidate (e.g. ``mlp/global``) on every region it scores.

``--rule Z_MIN`` instead re-runs the evaluate step's streaming pass on the run's splits and
predictions and prints, per eval region, what the champion rule decides with the noise test
off (z_min 0: the point estimate, the rule before issue 15) and with ``Z_MIN`` (the previous
run's check left out of both), with the deciding margin: diff, user-clustered SE and z.

    METAFLOW_DATASTORE_SYSROOT_LOCAL=... python scripts/champion_margins.py [--run ID]
"""
from __future__ import annotations

import pathlib
import sys

# this checkout's pythia, not whichever one the environment installed (editable installs)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse

import numpy as np
import pandas as pd

from pythia import storage
from pythia.config import GLOBAL_REGION
from pythia.evaluate.champions import champion_scores
from pythia.evaluate.frames import PROVIDER, split_frame
from pythia.evaluate.io import importance_weights, read_predictions, read_world
from pythia.evaluate.margins import paired_margin
from pythia.evaluate.slices import check_candidates
from pythia.evaluate.stats import row_log_loss
from pythia.features import (IMPRESSION_ID, SPLIT, TARGETS, TEST_NATURAL, USER_ID, VALIDATION,
                             Y_AGE_GENDER)

BASELINES = ("class_prior", "logreg")  # models.BASELINE_MODELS; a test checks they agree
SHORT = {"age_gender": "AgeGender", "gender": "gender", "age": "age"}


def run_artifacts(run_id: str | None) -> dict:
    from metaflow import Flow, Run, namespace

    namespace(None)
    run = Run(f"DemoFlow/{run_id}") if run_id else Flow("DemoFlow").latest_successful_run
    task = run["evaluate"].task
    d = task.data
    return {"run": run.pathspec, "candidates": d.candidates, "champions": d.champions,
            "metrics": d.metrics, "split_manifest": d.split_manifest,
            "source_path": d.source_path, "age_edges": tuple(d.params.etl.age_edges)}


def weighted_diff(d: np.ndarray, w: np.ndarray, users: np.ndarray) -> tuple[float, float, float]:
    """(weighted mean of d, its SE over rows, its SE over users) — the linearised ratio SEs of
    ``margins.paired_margin``, the champion rule's in-memory reference (every cluster count
    accepted here: the script shows the figures, the rule decides)."""
    by_user = paired_margin(d, w, users, min_groups=1)
    return by_user.diff, paired_margin(d, w, np.arange(len(d)), min_groups=1).se, by_user.se


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="DemoFlow run id (default: latest successful)")
    ap.add_argument("--split", choices=("test", "validation"), default="test")
    ap.add_argument("--candidate", help="MODEL/REGION to put in the champion's place")
    ap.add_argument("--no-power-users", action="store_true",
                    help="leave out the power users' rows (the natural_no_power_users test set)")
    ap.add_argument("--rule", type=float, metavar="Z_MIN",
                    help="print the champion rule's decisions at z_min 0 and Z_MIN instead")
    args = ap.parse_args(argv)

    art = run_artifacts(args.run)
    if args.rule is not None:
        return print_rule(art, args.rule)
    edges, n_age = art["age_edges"], len(art["age_edges"])
    split = TEST_NATURAL if args.split == "test" else VALIDATION
    manifest, cands = art["split_manifest"], art["candidates"]
    rows = storage.read_frame(manifest["paths"][split]).reset_index(drop=True)
    frame = split_frame(split, rows, edges)
    weights = (importance_weights(rows[Y_AGE_GENDER].to_numpy(), manifest, split, n_age)
               if split == VALIDATION else np.ones(len(rows)))
    pos_of = pd.Series(np.arange(len(rows)), index=rows[IMPRESSION_ID].astype(str))
    present = sorted(set(frame.regions))

    probs: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for c in cands:
        if int(c.get("config_id", 0) or 0) != 0:
            continue
        t = read_predictions(c["predictions_uri"]).to_pandas()
        t = t[t[SPLIT].astype(str) == split]
        pos = pos_of.reindex(t[IMPRESSION_ID].astype(str)).to_numpy()
        ok = ~np.isnan(pos)
        out = {}
        for target in TARGETS:
            k = 2 * n_age if target == "age_gender" else (2 if target == "gender" else n_age)
            full = np.full((len(rows), k), np.nan)
            full[pos[ok].astype(int)] = np.stack(t[f"p_{target}"].to_numpy()[ok])
            out[target] = full
        probs[(c["model"], c["region"])] = out

    bayes = None
    world = read_world(art["source_path"])
    if world is not None:
        from pythia.evaluate.gauge import posterior_probs
        bayes = posterior_probs(world, frame, n_age)[PROVIDER]

    scores = champion_scores(art["metrics"], check_candidates(cands), cands, present)
    champions = art["champions"].set_index("region")
    print(f"run {art['run']}; split {split}; rows {len(rows)}"
          + ("; power users left out" if args.no_power_users else ""))
    print("z = (champion - baseline) / SE over users; negative = champion better\n")
    for region in [GLOBAL_REGION] + present:
        mask = np.ones(len(rows), bool) if region == GLOBAL_REGION else frame.regions == region
        if args.no_power_users:
            mask &= ~frame.power
        per_user = rows[USER_ID][mask].value_counts().to_numpy()
        kish = per_user.sum() ** 2 / max((per_user ** 2).sum(), 1)
        here = scores[scores["eval_region"] == region]
        if args.candidate:
            model, cregion = args.candidate.split("/")
            cregion = region if cregion == "REGION" else cregion
            champ = (model, cregion)
            blessed = "(chosen by --candidate)"
        else:
            row = champions.loc[region]
            champ = (row["model"], row["candidate_region"])
            blessed = "blessed" if row["blessed"] else "NOT blessed"
        if champ not in probs:
            print(f"{region}: no predictions for {champ}\n")
            continue
        picks = {}
        for b in BASELINES:
            pool = here[here["model"] == b].sort_values("val_logloss")
            if len(pool):
                picks[b] = (b, pool.iloc[0]["candidate_region"])
        print(f"## {region}: champion {champ[0]}/{champ[1]} {blessed}; {int(mask.sum())} rows of "
              f"{len(per_user)} users (largest {per_user.max()} rows; effective users "
              f"{kish:.0f})")
        header = (f"{'target':9} {'n':>6} {'bayes':>7} {'champ':>7} | "
                  + " | ".join(f"{b + ('/' + picks[b][1] if b in picks else ''):>30}"
                               for b in BASELINES))
        print(header)
        for target in ("age_gender", "gender", "age"):
            y = frame.labels[PROVIDER][target]
            m = mask & (y >= 0) & ~np.isnan(probs[champ][target][:, 0])
            users, w = rows[USER_ID].to_numpy()[m], weights[m]
            ll_c = row_log_loss(y[m], probs[champ][target][m])
            mean_c = float((w * ll_c).sum() / w.sum())
            bay = (float((w * row_log_loss(y[m], bayes[target][m])).sum() / w.sum())
                   if bayes is not None else np.nan)
            cells = []
            for b in BASELINES:
                if b not in picks:
                    cells.append(f"{'-':>30}")
                    continue
                pb = probs[picks[b]][target][m]
                ll_b = row_log_loss(y[m], pb)
                diff, se_r, se_u = weighted_diff(ll_c - ll_b, w, users)
                mean_b = float((w * ll_b).sum() / w.sum())
                # the champion against itself (a baseline that is the champion): no z
                z = f"z{diff / se_u:+5.1f}" if se_u > 0 else "(itself)"
                cells.append(f"{mean_b:.4f} {diff:+.4f}±{se_r:.4f}/{se_u:.4f} {z}")
            print(f"{SHORT[target]:9} {int(m.sum()):>6} {bay:7.4f} {mean_c:7.4f} | "
                  + " | ".join(cells))
        print()
    return 0


def print_rule(art: dict, z_min: float) -> int:
    """Per eval region: the champion rule's decision at z_min 0 and at ``z_min``."""
    import tempfile
    import time

    from pythia.evaluate.champions import baseline_models_of, choose_champions
    from pythia.evaluate.margins import margin_lookup
    from pythia.evaluate.stream import score_streaming

    cands = art["candidates"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        scored = score_streaming(cands, art["split_manifest"], art["age_edges"],
                                 scratch_dir=scratch)
    margins, bases = margin_lookup(scored.sums.groups), baseline_models_of(cands)
    print(f"run {art['run']}: streamed in {time.perf_counter() - t0:.0f} s; baselines "
          f"{', '.join(bases)}; previous-run check left out\n")
    rules = {z: choose_champions(scored.metrics, cands, scored.present, None, bases,
                                 margins=margins, z_min=z).set_index("region")
             for z in (0.0, z_min)}
    for region, old in rules[0.0].iterrows():
        new = rules[z_min].loc[region]
        print(f"{region:>7}: z_min 0 -> {old['champion'] or 'not blessed'}; z_min {z_min:g} -> "
              f"{new['champion'] or 'NOT blessed'}; {new['margin_vs']} (closest baseline): "
              f"diff {new['margin_diff']:+.4f} SE {new['margin_se']:.4f} z {new['margin_z']:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
