"""The bid-time scorer: bundle export, a NumPy runtime, a never-failing request boundary, CLI.

``export_champions`` (the flow's ``end`` step) writes the chosen models into one bundle folder,
each in the runtime its model asks for (``pythia.scoring.runtimes``);
``Scorer.load(path).score(request)`` scores one impression (NumPy only for MLP regions).
"""
from pythia.scoring.bundle import export_bundle, export_champions, write_bundle
from pythia.scoring.bundle_doc import read_bundle_doc
from pythia.scoring.cli import run_score_cli
from pythia.scoring.scorer import Scorer

__all__ = ["Scorer", "export_bundle", "export_champions", "read_bundle_doc", "run_score_cli",
           "write_bundle"]
