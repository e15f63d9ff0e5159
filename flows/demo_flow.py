"""DemoFlow: bid logs + provider labels -> age/gender models -> a bid-time scorer.

Run the whole job on the embedded synthetic world with ``python flows/demo_flow.py run``.
"""
import os

# Metaflow runs up to 16 tasks at once by default; on a small machine 16 Spark JVMs or 16
# TensorFlow trainings thrash (3 parallel hourly Spark tasks took 76 s each vs 23 s one at a
# time). Default to one task per two cores; `--max-workers N` or METAFLOW_RUN_MAX_WORKERS wins.
_DEFAULT_WORKERS = str(max(1, (os.cpu_count() or 2) // 2))
for _cmd in ("RUN", "RESUME"):
    os.environ.setdefault(f"METAFLOW_{_cmd}_MAX_WORKERS", _DEFAULT_WORKERS)

from metaflow import (FlowSpec, Parameter, card, current, resources, schedule,  # noqa: E402
                      step)

from pythia import pipeline  # noqa: E402


@schedule(daily=True)  # used by Airflow/Argo deployments; a plain `run` ignores it
class DemoFlow(FlowSpec):
    """Predict age and gender behind ad impressions, from bid logs and provider labels.

    Steps:
      start            validate parameters, resolve the source (generate the synthetic world
                       for ``synthetic://…``), pick the 5-day window
      select_providers score every label provider per country, pick one (overrides win)
      prepare_labels   one label per user from the chosen provider (Spark)
      etl_hour         foreach over groups of hours of the day: validate, quarantine, derive
                       features, join labels, split by date (Spark; one session per task)
      join_hours       power users, resampling from global counts, the four splits,
                       reconciliation of every row (Spark)
      to_tfrecords     vocabularies/statistics from train days, TFRecord shards (Spark)
      train            foreach over (model, region[, config]): fit, calibrate, predict
      evaluate         metrics, Bayes gauge, distributions, champions, a card
      end              export the champions' bid-time bundle
    """

    source = Parameter(
        "source", default="synthetic://default",
        help="Data root in the contract layout (local folder or s3:// prefix), or "
             "synthetic://tiny|default|large[?seed=N] for the generated world.")
    date = Parameter(
        "date", default="",
        help="Test day YYYY-MM-DD (the window is date-4 … date), or 'yesterday' (UTC). Empty: "
             "yesterday on a scheduled (Airflow/Argo) run, else the newest date of the source "
             "with all 24 hour partitions.")
    models = Parameter("models", default="mlp,tabnet,gbdt", help="Models to train.")
    regions = Parameter(
        "regions", default="all", help="'all' (global + every region in the data) or a list.")
    provider_overrides = Parameter(
        "provider_overrides", default="US=lucid",
        help="COUNTRY=provider pairs that win over the provider scores.")
    seed = Parameter("seed", default=0, type=int, help="Seed for resampling and training.")
    resample = Parameter(
        "resample", default="balanced", help="Class resampling: balanced | natural | sqrt.")
    drop_power_users = Parameter(
        "drop_power_users", default=True, type=bool,
        help="Remove power users from train/validation.")
    power_user_threshold = Parameter(
        "power_user_threshold", default=0.0, type=float,
        help="Impressions per user per day above which a user is a power user; 0 = derive "
             "from the data (99th percentile).")
    allow_gaps = Parameter(
        "allow_gaps", default=False, type=bool,
        help="Run even if hour partitions are missing (the gaps are recorded).")
    hours_per_task = Parameter(
        "hours_per_task", default=int(os.environ.get("PYTHIA_HOURS_PER_TASK", "4")), type=int,
        help="Hours of day per etl_hour task (1 = 24 tasks; a divisor of 24). Locally a few "
             "hours per task saves JVM starts; on a cluster use 1.")
    spark_master = Parameter(
        "spark_master", default="",
        help="Spark master URL (empty: $PYTHIA_SPARK_MASTER, else $SPARK_REMOTE for Spark "
             "Connect, else local mode).")
    data_root = Parameter(
        "data_root", default="",
        help="Where run-scoped files go (local folder or s3:// prefix). Empty: "
             "$PYTHIA_DATA_ROOT, else ./.pythia/data.")
    max_epochs = Parameter("max_epochs", default=8, type=int, help="Training epochs cap.")
    age_head = Parameter("age_head", default="ordinal", help="MLP age head: ordinal | softmax.")
    prior_correction = Parameter(
        "prior_correction", default="bayes", help="bayes | em | none (test-time priors).")
    search = Parameter(
        "search", default=0, type=int,
        help="Hyperparameter exploration: N random configs per (model, region); 0 = off.")

    @step
    def start(self):
        """Validate parameters, resolve the source and the window."""
        self.params = pipeline.resolve_params(self)
        self.source_path, self.window, self.gaps = pipeline.resolve_source_and_window(
            self.params, scheduled=pipeline.is_scheduled_run(current.run_id))
        self.run_root = pipeline.run_paths(self.params, current.flow_name, current.run_id).base
        self.hour_groups = pipeline.hour_groups(self.params)
        print(f"source {self.source_path}; window {self.window}; {len(self.hour_groups)} "
              f"etl tasks")
        self.next(self.select_providers)

    @step
    def select_providers(self):
        """Score providers per country from their metrics; overrides win."""
        self.provider_choice, self.provider_map, self.provider_warnings = (
            pipeline.select_providers(
                self.source_path, self.params,
                pipeline.run_paths(self.params, current.flow_name, current.run_id)))
        self.next(self.prepare_labels)

    @resources(cpu=2, memory=8000)
    @step
    def prepare_labels(self):
        """One label per user from the provider chosen for the user's country."""
        paths = pipeline.run_paths(self.params, current.flow_name, current.run_id)
        self.labels_manifest = pipeline.prepare_labels(
            self.source_path, self.provider_map, self.params, paths)
        self.next(self.etl_hour, foreach="hour_groups")

    @resources(cpu=2, memory=8000)
    @step
    def etl_hour(self):
        """Validate, quarantine, derive features and join labels for these hours of day."""
        self.hours = list(self.input)
        pipeline.maybe_inject_failure(self.hours)
        paths = pipeline.run_paths(self.params, current.flow_name, current.run_id)
        self.manifest = pipeline.run_etl_hours(
            self.source_path, self.hours, self.window, self.labels_manifest, self.params, paths)
        self.next(self.join_hours)

    @resources(cpu=2, memory=8000)
    @step
    def join_hours(self, inputs):
        """Power users, resampling from global class counts, the four splits, reconciliation."""
        self.merge_artifacts(inputs, include=["params", "source_path", "window", "gaps",
                                              "provider_choice", "provider_map",
                                              "labels_manifest", "run_root"])
        self.hour_manifests = sorted((i.manifest for i in inputs), key=lambda m: m["hours"])
        paths = pipeline.run_paths(self.params, current.flow_name, current.run_id)
        (self.split_manifest, self.reconciliation, self.resample_rates,
         self.quarantine) = pipeline.finalize_splits(self.hour_manifests, self.params, paths)
        self.next(self.to_tfrecords)

    @resources(cpu=2, memory=8000)
    @step
    def to_tfrecords(self):
        """Vocabularies and statistics from the train days; TFRecord shards per split/region."""
        paths = pipeline.run_paths(self.params, current.flow_name, current.run_id)
        self.tf_manifest, self.encoders = pipeline.to_tfrecords(
            self.split_manifest, self.params, paths)
        self.train_grid = pipeline.train_grid(self.params, self.tf_manifest)
        self.next(self.train, foreach="train_grid")

    @resources(cpu=2, memory=8000)
    @step
    def train(self):
        """Fit one (model, region, config) candidate; predict validation and test days."""
        paths = pipeline.run_paths(self.params, current.flow_name, current.run_id)
        self.candidate = pipeline.train_candidate(
            self.input, self.tf_manifest, self.split_manifest, self.params, paths)
        self.next(self.evaluate)

    @card(type="blank", id="report", timeout=600)
    @resources(cpu=2, memory=8000)
    @step
    def evaluate(self, inputs):
        """Metrics, Bayes gauge, distributions and champions; render the report card."""
        self.merge_artifacts(inputs, exclude=["candidate"])
        self.candidates = [i.candidate for i in inputs]
        paths = pipeline.run_paths(self.params, current.flow_name, current.run_id)
        results = pipeline.evaluate(self.candidates, self.split_manifest, self.source_path,
                                    self.params, paths, current.flow_name)
        self.metrics, self.champions, self.headline = (
            results["metrics"], results["champions"], results["headline"])
        self.distributions, self.gauge = results["distributions"], results["gauge"]
        self.reports_path = paths.reports
        pipeline.render_card(current.card["report"], results, self.reconciliation,
                             self.provider_choice)
        self.next(self.end)

    @step
    def end(self):
        """Export the champions' bid-time bundle and say where to look."""
        paths = pipeline.run_paths(self.params, current.flow_name, current.run_id)
        self.bundle_path = pipeline.export_bundle(
            self.champions, self.candidates, self.tf_manifest, self.params, paths,
            current.pathspec, current.flow_name)
        print(pipeline.summary_text(self, current.flow_name, current.run_id))


if __name__ == "__main__":
    DemoFlow()
