"""A day whose candidates bless nothing keeps the previous run's champions, each scoring
through the vocabularies and statistics it trained with (bundle format 7).

Before (session 62's fix, to session 64) a previous champion was kept only when its run's
encoders equalled this run's; on another day's data they never do, so every such region fell to
the global slot. Two runs of the tiny world in one datastore: A blesses its MLP; B holds out
fewer users (other train rows, so other encoders) and trains only a baseline, which is never
blessed.
"""
import numpy as np
import pandas as pd
import pytest

from flow_fixtures import flow_env, point_estimate_config, runner  # noqa: F401,F811

pytestmark = [pytest.mark.slow, pytest.mark.spark]

RUN = dict(source="synthetic://tiny", max_epochs=2, regions="global,NA")


def _requests(world: str, n: int = 300) -> list[dict]:
    """Impressions of the tiny world's test day as the bidder sends them (ts: epoch s)."""
    frame = pd.read_parquet(f"{world}/impressions/date=2026-11-20/hour=12").head(n)
    frame["ts"] = frame["ts"].map(pd.Timestamp.timestamp)
    return [{k: v for k, v in row.items() if v is not None and v == v}
            for row in frame.drop(columns=["date", "hour"], errors="ignore")
            .to_dict("records")]


def test_a_kept_champion_scores_through_its_own_runs_encoders(flow_env):
    from pythia import storage
    from pythia.config import GLOBAL_REGION
    from pythia.features import TARGETS
    from pythia.scoring import Scorer
    from pythia.scoring.bundle_doc import read_bundle_doc

    root, env = flow_env
    with runner(env, config=point_estimate_config(root)) as r:
        a = r.run(**RUN, models="mlp,logreg").run
        assert a.successful
        b = r.run(**RUN, models="logreg", holdout_users=0.1).run
        assert b.successful
    assert a.data.encoders != b.data.encoders  # other train rows: other encoders
    blessed = {row["region"] for row in pd.DataFrame(a.data.champions).to_dict("records")
               if row.get("blessed")}
    assert GLOBAL_REGION in blessed
    assert not any(pd.DataFrame(b.data.champions)["blessed"].fillna(False))
    doc = read_bundle_doc(b.data.bundle_path)
    assert set(doc["models"]) == blessed  # every blessed region of A kept, nothing else
    for region, entry in doc["models"].items():
        assert (entry["origin"], entry["encoders"]) == ("previous run",
                                                        f"encoders-{region}.json")
        assert storage.read_json(f"{b.data.bundle_path}/{entry['encoders']}") == \
            a.data.encoders
    reqs = _requests(f"{root}/worlds/tiny-seed0")
    kept, theirs = Scorer.load(b.data.bundle_path), Scorer.load(a.data.bundle_path)
    for region in doc["models"]:
        got = kept.score_arrays(reqs, slot=region)
        want = theirs.score_arrays(reqs, slot=region)
        for t in TARGETS:
            np.testing.assert_allclose(got[t], want[t], rtol=0, atol=1e-9)
    routed = kept.score_arrays(reqs)
    np.testing.assert_allclose(routed["age_gender"], theirs.score_arrays(reqs)["age_gender"],
                               rtol=0, atol=1e-9)
