"""Regional candidates started from a fitted global one: ``Model.fit(..., start=model)``."""
from __future__ import annotations

import pytest

from pythia.models import get_model
from test_models import FAST, HPARAMS, make_encoders, make_split, uniform_priors


@pytest.fixture(scope="module")
def data():
    return {"train": make_split(400, 0), "valid": make_split(200, 1)}


def test_a_model_that_does_not_warm_start_says_so(data):
    prior = get_model("class_prior")
    fitted = prior(make_encoders(), HPARAMS["class_prior"], FAST)
    fitted.fit(data["train"], data["valid"], uniform_priors())
    assert not prior.warm_starts
    with pytest.raises(ValueError, match="does not start from a fitted model"):
        prior(make_encoders(), {}, FAST).fit(data["train"], data["valid"], uniform_priors(),
                                             start=fitted)
