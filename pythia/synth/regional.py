"""The size of a world's regional make effects: its exact posterior against the same world's
posterior from tables without them (``WorldConfig.regional_make_strength``).

    python -m pythia.synth.regional [--source synthetic://default] [--date 2026-11-20]

prints, per model region and target, the exact posterior's log-loss on the day's impressions
(true demographics) and what ignoring the regional effects costs (the region-blind posterior's
log-loss minus the exact one): the most a model without region-specific make effects can lose
to one with them, and the yardstick for "regional candidates should win here".
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd

from pythia.synth.posterior import World
from pythia.synth.world import build_params

__all__ = ["region_blind", "effect_size"]


def region_blind(world: World) -> World:
    """The same realised world (users, activity) with the device tables of its config without
    regional make effects: every other table is drawn identically (their own seed stream)."""
    config = dataclasses.replace(world.params.config, regional_make_strength=())
    tables = build_params(config, world.params.seed).arrays
    arrays = {**world.params.arrays, "p_model": tables["p_model"], "m_model": tables["m_model"]}
    weights = {"R": world.R, "RP": world.RP, "RL": world.RL, "RN": world.RN, "RNL": world.RNL}
    return World(world.root, dataclasses.replace(world.params, arrays=arrays), weights)


def _losses(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Mean log-loss of AgeGender and of its gender and age marginals."""
    n_gender = 2
    cube = p.reshape(len(p), n_gender, -1)
    rows = np.arange(len(y))
    g, a = y // cube.shape[2], y % cube.shape[2]
    picks = {"age_gender": p[rows, y], "gender": cube.sum(axis=2)[rows, g],
             "age": cube.sum(axis=1)[rows, a]}
    return {k: float(-np.mean(np.log(np.clip(v, 1e-12, 1.0)))) for k, v in picks.items()}


def effect_size(world: World, rows: pd.DataFrame, y: np.ndarray, regions: np.ndarray
                ) -> pd.DataFrame:
    """Per region (and 'global'): rows, exact log-loss and the region-blind excess, per target.

    Args:
        world: the generated world.
        rows: impression rows (the posterior's columns).
        y: each row's true AgeGender index (the posterior's column order).
        regions: each row's model region.
    """
    exact = world.posterior(rows)
    blind = region_blind(world).posterior(rows)
    out = []
    for region in ["global", *sorted(set(regions))]:
        m = np.ones(len(rows), bool) if region == "global" else regions == region
        e, b = _losses(exact[m], y[m]), _losses(blind[m], y[m])
        out.append({"region": region, "rows": int(m.sum()),
                    **{f"exact_{k}": e[k] for k in e},
                    **{f"excess_{k}": b[k] - e[k] for k in e}})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    import pyarrow.dataset as ds

    from pythia.geo.countries import region_of
    from pythia.paths import default_cache_root
    from pythia.synth import load_world, resolve_source

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default="synthetic://default")
    ap.add_argument("--date", default=None, help="UTC day (default: the world's last)")
    args = ap.parse_args(argv)
    root = resolve_source(args.source, default_cache_root())
    world = load_world(root)
    day = args.date or world.params.config.end_date
    data = ds.dataset(f"{root}/impressions", partitioning="hive")
    rows = data.to_table(filter=ds.field("date") == day).to_pandas()
    if rows.empty:
        raise SystemExit(f"{root}: no impressions on {day}; pass --date within the world")
    truth = world.truth().set_index("user_id")
    labels = {c: i for i, c in enumerate(world.class_labels)}
    y = truth.loc[rows["user_id"], "age_gender"].map(labels).to_numpy()
    regions = np.array([region_of(c) for c in rows["country"]])
    table = effect_size(world, rows, y, regions)
    print(f"{root}, {day}: regional make strengths {world.params.config.regional_make_strength}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
