"""The synthetic world: seeded bid logs, provider labels and metrics, and their exact posterior.

``generate_world`` writes the data-contract layout (plus ``truth/``); ``resolve_source`` turns a
``synthetic://PRESET?seed=N`` source (``PRESETS``: tiny, default, skewed, large) into a cached
generated folder; ``load_world`` gives a ``World`` whose ``posterior`` is the exact Bayes
P(AgeGender | one impression's features), optionally also given the user's impressions so far
today (``user_impressions_today`` is that count's reference definition) and the observed
power-user flag. Local time is ``pythia.geo``'s (IANA zones, DST).
"""
from pythia.contract import IMPRESSION_SCHEMA, LABEL_SCHEMA, PROVIDER_METRICS_SCHEMA
from pythia.synth.generate import (check_world, generate_world, is_complete, resolve_source,
                                   run_synth_cli, world_fingerprint)
from pythia.synth.activity import user_impressions_today
from pythia.synth.posterior import World, load_world
from pythia.synth.world import PRESETS, WorldConfig

__all__ = ["PRESETS", "WorldConfig", "World", "generate_world", "resolve_source", "load_world",
           "run_synth_cli", "is_complete", "world_fingerprint", "check_world",
           "user_impressions_today", "IMPRESSION_SCHEMA",
           "LABEL_SCHEMA", "PROVIDER_METRICS_SCHEMA"]
