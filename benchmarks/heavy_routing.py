"""What routing a finished run's heavy rows to another candidate would do: the champion rule's
noise margin on validation, and the figure on users the world never drew.

The champion rule blesses a model only when it beats every baseline by more than ``z_min``
user-clustered SEs on validation (``evaluate.margins``). On the default world the global MLP
beats logistic regression on fresh users on every seed, yet is blessed on one seed of three
(docs/new-users.md, session 37): the SE of the difference is dominated by a few heavy users,
on whom both models are near the class prior and the MLP is the worse. This measures the
candidate ``A`` with its rows of ``n >= cut`` impressions earlier that day (the model input
``user_impressions_today``) scored by ``B`` instead, per cut:

* **validation**: ``A' - B`` natural-weighted AgeGender log-loss with its user-clustered SE,
  computed as the champion rule computes it (``evaluate.io.importance_weights``,
  ``evaluate.margins.user_groups`` and ``paired_margin``; the rows scored through each
  candidate's one-slot bundle), so the ``--cuts none`` line reproduces the run's own margin;
* **fresh users** (``fresh_users.score_fresh``: users drawn afresh from the run's world, scored
  by the bid-time scorer): ``A'``, ``A`` and ``B``, AgeGender log-loss × the population
  posterior on the same rows, over all rows and on power user-days.

Not a test; no timings. Example (session 38: docs/new-users.md):

    METAFLOW_DATASTORE_SYSROOT_LOCAL=… python benchmarks/heavy_routing.py \
        --run 1796418917492771 --users 100000 --cuts none,10,30,100
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np

from fresh_users import log_loss, parse_hours, score_fresh  # noqa: E402

JOINT = "age_gender"


def parse_cuts(spec: str) -> list[int | None]:
    """'none,10,30' -> [None, 10, 30] (None: no routing, the run's own candidate)."""
    cuts: list[int | None] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "none":
            cuts.append(None)
            continue
        try:
            cut = int(part)
        except ValueError:
            cut = 0
        if cut < 1:
            raise SystemExit(f"--cuts {spec!r}: {part!r} is not 'none' or a count of "
                             "impressions >= 1, e.g. none,10,30,100")
        cuts.append(cut)
    if not cuts:
        raise SystemExit(f"--cuts {spec!r}: expected e.g. none,10,30,100")
    return cuts


def heavy_rows(counts: np.ndarray, cut: int | None) -> np.ndarray:
    """Rows routed: ``n >= cut`` impressions earlier that day (none when ``cut`` is None)."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.zeros(len(counts), bool) if cut is None else counts >= cut


def routed(p_a: np.ndarray, p_b: np.ndarray, heavy: np.ndarray) -> np.ndarray:
    """``p_a`` with its heavy rows taken from ``p_b``."""
    return np.where(np.asarray(heavy, bool)[:, None], p_b, p_a)


def row_losses(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row, the log-loss of the true class (clipped as the evaluation clips)."""
    from pythia.evaluate.stats import row_log_loss
    return row_log_loss(np.asarray(y, np.int64), np.asarray(p, np.float64))


def routed_margin(loss_a: np.ndarray, loss_b: np.ndarray, weights: np.ndarray,
                  users: np.ndarray, heavy: np.ndarray):
    """The champion rule's margin of ``A`` routed to ``B`` on its heavy rows, against ``B``:
    the paired weighted difference (0 on the routed rows) with its user-clustered SE."""
    from pythia.evaluate.margins import paired_margin, user_groups
    d = np.where(np.asarray(heavy, bool), 0.0, np.asarray(loss_a) - np.asarray(loss_b))
    return paired_margin(d, np.asarray(weights, np.float64), user_groups(users))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="DemoFlow run id (its datastore: "
                    "METAFLOW_DATASTORE_SYSROOT_LOCAL)")
    ap.add_argument("--model", default="mlp/global#0", help="candidate A (routed)")
    ap.add_argument("--to", default="logreg/global#0", help="candidate B (takes A's heavy "
                    "rows; the baseline A is compared with)")
    ap.add_argument("--cuts", default="none,10,30,100",
                    help="impressions earlier that day from which a row is routed to B")
    ap.add_argument("--users", type=int, default=0,
                    help="fresh users to draw (default: the world's own count)")
    ap.add_argument("--stream", type=int, default=1_000_003,
                    help="added to the world's seed for the fresh users (as fresh_users.py)")
    ap.add_argument("--hours", default="0-23", help="UTC hours of the test day, e.g. 0-23")
    args = ap.parse_args(argv)
    cuts, hours = parse_cuts(args.cuts), parse_hours(args.hours)
    if args.model == args.to:
        raise SystemExit(f"--model and --to are both {args.model!r}: route to another "
                         "candidate")

    from metaflow import Run, namespace

    from pythia import features
    from pythia.evaluate.io import importance_weights

    df, probs, _, (vdf, vprobs) = score_fresh(args.run, f"{args.model},{args.to}", args.users,
                                              args.stream, hours, split="validation",
                                              with_bundle=False)
    namespace(None)
    manifest = Run(f"DemoFlow/{args.run}")["join_hours"].task.data.split_manifest
    count = features.USER_IMPRESSIONS_TODAY
    labelled = vdf["y_age_gender"].notna().to_numpy()  # the split's rows all are, in a run
    vdf = vdf[labelled].reset_index(drop=True)
    y_val = vdf["y_age_gender"].to_numpy(np.int64)
    weights = importance_weights(y_val, manifest, "validation", len(features.age_bucket_labels()))
    loss_a = row_losses(vprobs[args.model][JOINT][labelled], y_val)
    loss_b = row_losses(vprobs[args.to][JOINT][labelled], y_val)
    y = df["y_age_gender"].to_numpy(np.int64)
    power = df[features.IS_POWER_USER].to_numpy(bool)
    slices = {"all": np.ones(len(df), bool), "power user-days": power}
    pop = {s: log_loss(probs["population"][JOINT][m], y[m]) for s, m in slices.items()}

    def ratio(p: np.ndarray, s: str) -> float:
        return log_loss(p[slices[s]], y[slices[s]]) / pop[s]
    print(f"run {args.run}: validation {len(y_val):,} rows; A = {args.model}, B = {args.to}; "
          f"fresh users: A' (A routed) / A / B x population")
    for cut in cuts:
        m = routed_margin(loss_a, loss_b, weights, vdf[features.USER_ID].to_numpy(),
                          heavy_rows(vdf[count].to_numpy(), cut))
        p = routed(probs[args.model][JOINT], probs[args.to][JOINT],
                   heavy_rows(df[count].to_numpy(), cut))
        fresh = "; ".join(f"{s} {ratio(p, s):.4f} / {ratio(probs[args.model][JOINT], s):.4f} / "
                          f"{ratio(probs[args.to][JOINT], s):.4f}" for s in slices)
        where = "no routing" if cut is None else f"rows with {cut}+ impressions today to B"
        print(f"{where}: validation A' - B {m.diff:+.4f} ± {m.se:.4f} (z {m.z:+.2f}, "
              f"{m.n_groups} user groups); fresh {fresh}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
