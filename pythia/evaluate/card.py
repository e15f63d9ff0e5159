"""The evaluation report as a Metaflow card: champions, headline table, Bayes gauge, per-region
figures, data reconciliation and provider choice, with prose for readers who never open the code.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from pythia.config import GLOBAL_REGION
from pythia.evaluate.gauge import with_ses

FIGURE_KINDS = (
    ("per_class_f1", "Per-class F1 of the best candidates (and the exact posterior when known)"),
    ("confusion", "Confusion matrices of the champion, each row normalised to the true class"),
    ("reliability", "Reliability diagrams: when the model says p, is it right p of the time?"),
    ("distribution", "Predicted class shares (mean probability and argmax) vs the labels"),
)

INTRO = """
# Pythia evaluation report

Each **candidate** is one model of the registry trained either on one region or on all of them
(`global`). For every region, the candidate with the lowest **validation log-loss** on the joint
AgeGender target (natural-weighted; in a region whose validation rows hold 100 user groups or
more, every candidate scores each row under temperatures fitted without its fifth of the users,
so none is scored on the rows it was calibrated on: `fold_regions` of `candidates`) wins,
provided it is not a baseline — so it beats every
baseline{baseline}, the constant class prior among them, by more than noise: its paired
validation log-loss difference with each baseline must be below -`z_min` standard errors
clustered by user (impressions of one user are not independent); `margin_vs` names the best
model and the closest baseline, `margin_diff` = model - baseline, `margin_se`, `margin_z` — and
does not do worse than the previous run's champion on the same test rows (a small tolerance
applies). A region without a
blessed champion exports nothing new: the bundle keeps the previous champion (with the
vocabularies and statistics it trained with), or routes the region to the global model; a
global slot with neither falls back to the best baseline.

Scores below are on the **natural test day** (the most recent day, not resampled) against the
**provider labels** unless said otherwise. Lower log-loss is better; macro-F1 averages the F1
of every class present. On synthetic data, `bayes` is the exact posterior of the generator:
no model can beat it on average, and *model / Bayes* log-loss ratios near 1 are ideal.
"""


def _fmt(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Round floats and blank missing values so tables read cleanly."""
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(digits)
        out[c] = out[c].astype(object).where(out[c].notna(), "")
    return out


def render_card(card: Any, results: Mapping[str, Any], reconciliation: pd.DataFrame | None,
                provider_choice: pd.DataFrame | None, stack_lines: Sequence[str] = ()) -> None:
    """Append the report's components to ``card`` (``metaflow.current.card[...]``).

    Args:
        card: anything with ``append(component)``, normally a Metaflow card.
        results: the dict returned by ``evaluate.run``.
        reconciliation: rows in = used + filtered + quarantined, per stage (or None).
        provider_choice: the label provider chosen per country and why (or None).
        stack_lines: ``pythia.stack.report_lines`` of the run (the libraries it trained with,
            and a warning when its train tasks ran on different ones); none: no section.
    """
    from metaflow.cards import Markdown, Table

    for key in ("champions", "headline", "figures"):
        if key not in results:
            raise ValueError(f"results lack {key!r}: pass the dict evaluate.run returned")
    champions: pd.DataFrame = results["champions"]
    _append_baseline_alarm(card, champions)
    _append_verdict_alarm(card, results.get("model_verdicts"))
    names = ", ".join(f"`{m}`" for m in results.get("baseline_models") or ())
    baseline = f" ({names})" if names else ""
    card.append(Markdown(INTRO.format(baseline=baseline)))

    card.append(Markdown("## Champions\n\n`blessed` tells whether the region's winner replaces "
                         "the previous champion; `reason` says why or why not."))
    columns = ["region", "champion", "blessed", "val_logloss", "baseline_val_logloss",
               "prior_val_logloss", "margin_vs", "margin_diff", "margin_se", "margin_z", "z_min",
               "previous_logloss", "current_logloss_on_same_rows", "reason", "guard"]
    card.append(Table.from_dataframe(_fmt(champions.reindex(columns=columns)), truncate=False))

    card.append(Markdown(
        "## Headline\n\nPer evaluated region (`global` = all rows): every candidate that can "
        "score it, the champion first. `val_logloss` is AgeGender on validation (held-out users); "
        "`logloss_*` / `macro_f1_*` are on the natural test day; `bayes_ratio_*` = model "
        "log-loss / exact-posterior log-loss on the same rows."))
    card.append(Table.from_dataframe(_fmt(results["headline"]), truncate=False))
    _append_explained_table(card, _MODEL_VERDICTS, results.get("model_verdicts"))
    _append_regional_vs_global(card, results.get("regional_vs_global"))
    _append_explained_table(card, _BLIND_TWINS, results.get("blind_twins"))
    structure = results.get("regional_structure")
    _append_explained_table(card, _REGIONAL_STRUCTURE,
                            None if structure is None else with_ses(structure))
    _append_seed_pool(card, results)

    gauge = results.get("gauge")
    if gauge is not None and len(gauge):
        _append_gauge_slices(card, results.get("gauge_slices"))
        g = gauge[(gauge["test_set"] == "natural") & (gauge["eval_region"] == GLOBAL_REGION)]
        card.append(Markdown(
            "## Bayes gauge (synthetic data)\n\nAll rows, natural test day. Against `truth` the "
            "exact posterior is P(true AgeGender | features); against `provider` labels it is "
            "P(provider's label | features, provider) — the noise of the labels included. "
            "`ratio` is against the realised posterior (the headline bar), `ratio_in_between` "
            "against the in-between one (empty unless `[evaluate] in_between_gauge` is on), "
            "`ratio_population` against the population one, "
            "`gap_closed` = (population - model) / (population - "
            "realised)."))
        card.append(Table.from_dataframe(_fmt(g), truncate=False))
    elif results.get("gauge_note"):
        card.append(Markdown(f"_{results['gauge_note']}_"))

    _append_figures(card, results["figures"], list(champions["region"]))

    if reconciliation is not None:
        card.append(Markdown("## Data reconciliation\n\nEvery input row is accounted for: "
                             "rows in = rows used + rows filtered (by rule) + rows quarantined."))
        card.append(Table.from_dataframe(_fmt(pd.DataFrame(reconciliation))))
    if provider_choice is not None:
        card.append(Markdown("## Label provider per country\n\nThe provider whose labels were "
                             "used for each country, from the providers' quality metrics "
                             "(an override wins)."))
        card.append(Table.from_dataframe(_fmt(pd.DataFrame(provider_choice))))
    if stack_lines:
        card.append(Markdown("## Library stack\n\nThe same seed repeats a run exactly only on "
                             "the same libraries.\n\n" + "\n\n".join(
                                 f"**{ln}**" if ln.startswith("WARNING") else f"`{ln}`"
                                 for ln in stack_lines)))


def _append_explained_table(card: Any, text: str, table: pd.DataFrame | None,
                            digits: int = 4) -> None:
    """A section: its explanation (Markdown), then the whole table; nothing without rows."""
    from metaflow.cards import Markdown, Table

    if table is None or not len(table):
        return
    card.append(Markdown(text))
    card.append(Table.from_dataframe(_fmt(table, digits), truncate=False))


_MODEL_VERDICTS = (
    "## Models against the baselines\n\nPer model that is not a baseline and per region it "
    "scored: its best candidate there against the region's best baseline candidate, on the "
    "champion rule's measure (validation AgeGender log-loss, natural-weighted); `gap` = model "
    "- baseline, `gap_se` its user-clustered SE, `gap_z` = gap / SE. As for a champion, a "
    "model beats them (`verdict` ahead) only by more than `z_min` SEs; `within noise` is "
    "neither ahead nor behind. A model that beats them in no region cannot be a champion on "
    "this data (the warning at the top).")

_REGIONAL_VS_GLOBAL = (
    "## Regional vs global\n\nPer region and model: the candidate trained on the region "
    "(`start_from`: the global model it was fine-tuned from, blank when trained from "
    "scratch; `warm_fit`: the epochs or iterations the fine-tune kept, and the scale of "
    "its start's temperatures) next to the global candidate of the same model and config, "
    "scored on the same rows: validation (`val_logloss_*`) and natural test day (AgeGender). "
    "`gain_logloss_age_gender` = global - regional test log-loss: positive when the "
    "regional candidate does better. `val_diff` = regional - global validation log-loss "
    "(natural-weighted, paired on the same rows), `val_se` its standard error clustered by "
    "user and `val_z` = val_diff / val_se: |z| below 2 is noise; `test_diff` / `test_se` / "
    "`test_z`: the same on the natural test day (-test_diff is the gain above, with its "
    "noise); `new_diff` / `new_se` / `new_z`: on the test day's new users (held out of "
    "training: a bidder's case, as a device with a label needs no model). "
    "`val_diff_*` / `val_z_*`: "
    "the same on the region's power users and on its other users — the per-slice guard "
    "excludes a regional candidate whose z there is above `z_min`, and one whose "
    "`val_diff_other_users` is not below 0 (the baselines are not guarded). A regional "
    "fit that kept its start (no epoch or iteration gained, and its region's temperature "
    "scale within noise) scores every row as its start: 0 with a standard error of 0.")

_BLIND_TWINS = (
    "## Blind twins\n\nEach candidate trained blind to some features (its model's "
    "`blind_to`: the blind MLP of the README's \"Regional structure\") against its "
    "sighted model's candidates on the same rows: `*_diff` = sighted - blind AgeGender "
    "log-loss (below 0: the features help), `*_se` its SE clustered by user, `*_z` = diff / "
    "se, on validation (`val_`), the natural test day (`test_`) and its new users (`new_`). "
    "`same rows' fit`: the twins fitted on the same rows (the global pair in every region). "
    "`offset vs fine-tune`: the sighted global candidate against the blind one fine-tuned on "
    "the region: with `blind_to = region_device_make`, a region's make learnt as an offset "
    "in one global model against a regional model without it (below 0: the offset wins).")

_REGIONAL_STRUCTURE = (
    "## Regional structure (synthetic data)\n\nPer region, on its natural test day rows "
    "(provider labels): `effect_*` = log-loss of the **region-blind** posterior (every "
    "generative table but what a device make means in this region) / the population "
    "posterior's, what the world's regional effects are worth there (1: none). Every "
    "candidate that scores the region, global (`trained_on` global) and regional: "
    "`ratio_region_blind_*` = model / region-blind posterior, below 1 when the model knows "
    "more about the region than any model blind to its regional effects could "
    "(± its SE, clustered by user); "
    "`ratio_population_*` = model / population posterior. A global model that sees "
    "`region_device_make` can learn the effects as well as a regional one.")

_GAUGE_SLICES = (
    "## Bayes gauge per slice (synthetic data)\n\nPer region, its champion (else its best "
    "candidate) on the natural test day, its non-power users, its power users and its new "
    "users (`natural_new_users`: held out of train, `holdout_users`), on the "
    "same rows for model and posteriors. `ratio_*` = model / **realised** posterior (the "
    "world's drawn users and labels): the headline bar, the only one no model beats on "
    "average. `ratio_in_between_*` = model / **in-between** posterior (the generative "
    "tables plus what the run's train and validation rows reveal about the drawn users: "
    "docs/in-between-gauge.md; only when `[evaluate] in_between_gauge` is on): the bar a "
    "model given those rows could reach. "
    "`ratio_population_*` = model / **population** posterior (the generative tables only): "
    "on power users (few per group, which the realised posterior nearly identifies) a model "
    "lands between the population and the in-between ones. On new users the fair bar is "
    "`ratio_population_*`: their rows are not in training, so the population posterior is "
    "all a reader of the training rows can know of them (the realised one knows the drawn "
    "users). Against provider labels each ratio is given ± its SE, clustered by user: a "
    "slice of a few heavy users (new power users) moves by far more than its row count "
    "suggests.")


_SEED_POOL = (
    "## Over seeds\n\nThis run pooled with the earlier runs of the same data that differ only "
    "in their seed (`pythia seeds`): each margin above, per run, with its mean over the runs, "
    "its SE from the runs' spread (which holds the fits' noise as well as the users') and t on "
    "runs - 1 degrees of freedom. Read a verdict against the baselines, a regional or a "
    "blind-twin one here rather than from one run's z.")
_NO_SEED_POOL = (
    "_Over seeds: no earlier run of this data with another seed. One run's SEs above hold its "
    "users' noise, not its fits' (two seeds' fits differ by more: README, \"Over seeds\"); "
    "runs with other `--seed` values on the same data (`make seeds`) pool here._")


def _append_seed_pool(card: Any, results: Mapping[str, Any]) -> None:
    """The "Over seeds" section (``seeds.pool_with_earlier``), or a one-line note on a run
    with regional or blind-twin margins and no run to pool with; nothing otherwise."""
    from metaflow.cards import Markdown, Table

    from pythia.evaluate import pooled

    tables = results.get("seed_pool")
    if tables is None:
        if any(t is not None and len(t) for t in (results.get("regional_vs_global"),
                                                  results.get("blind_twins"))):
            card.append(Markdown(_NO_SEED_POOL))
        return
    card.append(Markdown(_SEED_POOL + "\n\n" + "\n\n".join(pooled.header_lines(tables))))
    for title, table, notes in pooled.sections(tables):
        card.append(Markdown(f"**{title}**"))
        card.append(Table.from_dataframe(table, truncate=False))
        for note in notes:
            card.append(Markdown(f"**{note}**" if note.startswith("WARNING") else f"_{note}_"))


def _append_regional_vs_global(card: Any, table: pd.DataFrame | None) -> None:
    """Each regional candidate against the global one of its family on the region's rows."""
    _append_explained_table(card, _REGIONAL_VS_GLOBAL, table)


def _append_gauge_slices(card: Any, table: pd.DataFrame | None) -> None:
    """Each region's chosen candidate against the posteriors on the natural slices."""
    _append_explained_table(card, _GAUGE_SLICES,
                            None if table is None else with_ses(table, 3), 3)


def baseline_warnings(champions: pd.DataFrame) -> list[str]:
    """The champions rows' ``warning`` texts (regions the baselines won), in region order."""
    if "warning" not in champions.columns:
        return []  # a run from before the baseline rule
    return [str(w) for w in champions["warning"] if isinstance(w, str) and w]


def _append_baseline_alarm(card: Any, champions: pd.DataFrame) -> None:
    """At the very top, in red and bold: the regions where no model beats the baselines."""
    from metaflow.cards import Markdown, ValueBox

    texts = baseline_warnings(champions)
    if not texts:
        return
    lost = [r for r, w in zip(champions["region"], champions["warning"])
            if isinstance(w, str) and w]
    card.append(ValueBox(title="NOT BLESSED: the baselines win", value=", ".join(lost)[:200],
                         subtitle="No model beats every baseline by more than noise here; the "
                                  "bundle exports nothing new for these regions.",
                         theme="danger"))
    heading = "## WARNING: no model beats the baselines by more than noise"
    card.append(Markdown("\n".join([heading, ""]
                                    + [f"- **{w}**" for w in texts])))


def _append_verdict_alarm(card: Any, verdicts: pd.DataFrame | None) -> None:
    """Near the top, in bold: the models that beat the baselines in no region."""
    from metaflow.cards import Markdown

    from pythia.evaluate.verdicts import failing_models

    failing = failing_models(verdicts)
    if failing:
        card.append(Markdown(
            f"## WARNING: {', '.join(f'`{m}`' for m in failing)} beat(s) the baselines in no "
            "region\n\n**Not ahead of the best baseline on validation beyond noise anywhere it "
            "was scored (\"Models against the baselines\" below): it cannot be a champion on "
            "this data. "
            "Leave it out of `--models`, or search its hyperparameters (`--search N`).**"))


def _append_figures(card: Any, figures: Mapping[str, bytes], regions: list[str]) -> None:
    """One section per region with its figures, in FIGURE_KINDS order."""
    from metaflow.cards import Image, Markdown

    regions = regions or sorted({n.split("__", 1)[1] for n in figures})
    for region in regions:
        shown = [(kind, text) for kind, text in FIGURE_KINDS if f"{kind}__{region}" in figures]
        if not shown:
            continue
        card.append(Markdown(f"## Region `{region}`"))
        for kind, text in shown:
            card.append(Markdown(f"**{text}**"))
            card.append(Image(figures[f"{kind}__{region}"], label=f"{kind} {region}"))
