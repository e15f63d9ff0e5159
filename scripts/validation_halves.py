"""Does a validation-chosen knob generalise? Choose on one half of the validation day's users,
score on the other half (and the other way round), without touching the test day.

For each region, fits the logreg model (AgeGender, as the MLP's wide start fits it) under each
variant given by ``--variants`` (JSON list of logreg hparam dicts), its validation-chosen knobs
(C, per-feature penalties, temperature) chosen on half A of the validation users, and scores
the natural-weighted AgeGender log-loss on half B; then swaps A and B. Prints per region and
variant: the loss on the half it chose on ("chosen-on"), the loss on the other half ("held
out"), and the held-out difference to the first variant with its SE over users.

    METAFLOW_DATASTORE_SYSROOT_LOCAL=... python scripts/validation_halves.py --run ID \\
        --variants '[{"per_feature_l2": false}, {"per_feature_l2": true}]'
"""
from __future__ import annotations

import pathlib
import sys

# this checkout's pythia, not whichever one the environment installed (editable installs)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import json
import zlib

import numpy as np
import pandas as pd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--regions", default="global,APAC,EU,LATAM,MEA,NA")
    ap.add_argument("--variants", default='[{"per_feature_l2": false}, {"per_feature_l2": true}]')
    ap.add_argument("--model", default="logreg")
    args = ap.parse_args(argv)
    variants = json.loads(args.variants)

    from metaflow import Run, namespace
    namespace(None)
    data = Run(f"DemoFlow/{args.run}")["to_tfrecords"].task.data
    tf_manifest, split_manifest, params = data.tf_manifest, data.split_manifest, data.params

    from pythia import quiet, storage, tfrecords
    quiet.import_tensorflow()
    from pythia.features import IMPRESSION_ID, USER_ID, VALIDATION
    from pythia.models import get_model
    from pythia.models.priors import priors_from_split_manifest
    from pythia.models.train import _training_data, validation_class_weights
    from pythia.tfrecords import encode

    edges = params.etl.age_edges
    priors = priors_from_split_manifest(split_manifest, edges)
    cw = np.asarray(validation_class_weights(split_manifest, len(edges)))
    vrows = storage.read_frame(split_manifest["paths"][VALIDATION])
    user_of = pd.Series(vrows[USER_ID].astype(str).to_numpy(),
                        index=vrows[IMPRESSION_ID].astype(str).to_numpy())
    user_of = user_of[~user_of.index.duplicated()]
    encoders = tfrecords.load_encoders(tf_manifest)
    for region in args.regions.split(","):
        probe = get_model(args.model)(encoders, {}, params.train)
        train, valid, _ = _training_data(probe, tf_manifest, region)
        ids = np.asarray(valid[encode.ID_COLUMN]).astype(str)
        users = user_of.reindex(ids).to_numpy().astype(str)
        half = np.array([zlib.crc32(u.encode()) % 2 for u in users])
        y = np.asarray(valid["y_age_gender"], dtype=np.int64)
        w = cw[y]
        held: dict[int, np.ndarray] = {}
        chosen: dict[int, list[float]] = {}
        for i, hp in enumerate(variants):
            loss_rows = np.zeros(len(y))
            chosen[i] = []
            for a in (0, 1):
                pick = {k: np.asarray(v)[half == a] for k, v in valid.items()}
                m = get_model(args.model)(encoders, hp, params.train)
                m.valid_class_weights = cw
                m.fit(train, pick, priors)
                p = m.predict_proba(valid)["age_gender"]
                ll = -np.log(np.maximum(p[np.arange(len(y)), y], 1e-15))
                loss_rows[half != a] = ll[half != a]
                sel = half == a
                chosen[i].append(float((w[sel] * ll[sel]).sum() / w[sel].sum()))
            held[i] = loss_rows
        base = held[0]
        print(f"## {region}: {len(y)} validation rows, {len(set(users))} users")
        for i, hp in enumerate(variants):
            mean = float((w * held[i]).sum() / w.sum())
            r = w * ((held[i] - base) - (w * (held[i] - base)).sum() / w.sum())
            se = float(np.sqrt((pd.Series(r).groupby(users).sum() ** 2).sum()) / w.sum())
            diff = float((w * (held[i] - base)).sum() / w.sum())
            print(f"  {json.dumps(hp):60} chosen-on {np.mean(chosen[i]):.4f}  held out "
                  f"{mean:.4f}  vs first {diff:+.4f} ± {se:.4f}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
