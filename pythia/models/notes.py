"""What a fit says about itself, printed at the end of its candidate's one train line.

A fit used to print a line of its own (the logistic regression's C path, the epochs a warm
start tried) beside the train step's line for the candidate: two lines per candidate, 45 for
the default run's 25. A fit now hands its note here (``say``, under its model's name) and
``train.fit_candidate_model`` takes the candidate's notes (``take``) into its summary
(``notes``), which ``train.print_candidate`` ends the line with. A note of a fit nested in
another model's (the MLP's logistic start) is dropped: the outer model's note says what
matters. ``PYTHIA_VERBOSE=1`` also prints each note as the fit makes it.
"""
from __future__ import annotations

_pending: list[tuple[str, str]] = []


def say(model: str, text: str) -> None:
    """Keep ``text`` for the line of the ``model`` candidate being fitted."""
    from pythia.quiet import verbose

    _pending.append((model, text))
    if verbose():
        print(f"{model}: {text}")


def take(model: str) -> list[str]:
    """The notes ``model``'s fits made since the last ``take``, in order; every pending note
    (other models' too) is dropped."""
    out = [text for name, text in _pending if name == model]
    _pending.clear()
    return out
