"""The bid-time scorer: bundle export, a NumPy runtime, a never-failing request boundary, CLI.

``export_bundle`` (run at the end of the flow) writes the champions into one bundle folder;
``Scorer.load(path).score(request)`` scores one impression with NumPy only (MLP regions).
"""
from pythia.scoring.bundle import export_bundle, read_bundle_doc, write_bundle
from pythia.scoring.cli import run_score_cli
from pythia.scoring.scorer import Scorer

__all__ = ["Scorer", "export_bundle", "read_bundle_doc", "run_score_cli", "write_bundle"]
