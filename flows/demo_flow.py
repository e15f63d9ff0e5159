"""DemoFlow: bid logs + provider labels -> age/gender models -> a bid-time scorer.

Run the whole job on the embedded synthetic world with ``python flows/demo_flow.py run``.
Deploy-time settings (geography, model hyperparameters, @resources) are in ``pythia.toml``
next to this file; run-time choices are the Parameters (``run --help``).
"""
import os
import sys
import tomllib

# Metaflow runs up to 16 tasks at once by default; on a small machine 16 Spark JVMs or 16
# TensorFlow trainings thrash. Default to one task per core this process may use (CPU affinity
# and cgroup quota, not the host's count; fewer when memory is short), and foreach tasks
# (etl_hour, train) size their thread pools to their share of the cores: on an idle 2-core VM
# 2 one-thread tasks at a time ran the default world in 253 s, 1 two-thread task in 481 s
# (session 24, before power users were trained on; docs/scaling.md §9).
# `--max-workers N` or METAFLOW_RUN_MAX_WORKERS wins (pythia.workers).
from pythia import quiet, threads, workers  # noqa: E402

workers.install_runtime(sys.argv)
quiet.install()  # Spark/TensorFlow start-up noise off unless PYTHIA_VERBOSE=1
threads.install()  # passive OpenMP waiting: must be set before numpy/sklearn/torch load

from metaflow import (Config, FlowSpec, Parameter, card, current, resources,  # noqa: E402
                      schedule, step)

from pythia import (disk_budget, etl, evaluate, input_health, models, providers,  # noqa: E402
                    quarantine_limit, runs, scoring, seeds, source, stack, tfrecords)
from pythia.code_package import forward_pythia_env, ship_package_data  # noqa: E402
from pythia.config import PARAMETERS, DeployConfig, RunParams, param_kwargs  # noqa: E402
from pythia.disk_full import full_disk_errors, task_outputs  # noqa: E402
from pythia.paths import (RunPaths, check_remote_roots, check_step_root,  # noqa: E402
                          default_cache_root)

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pythia.toml")


@schedule(daily=True)  # used by Airflow/Argo deployments; a plain `run` ignores it
@ship_package_data  # pythia/data in the code package remote steps run from (code_package.py)
@forward_pythia_env  # the launching shell's PYTHIA_* in every step, remote ones too
class DemoFlow(FlowSpec):
    """Predict age and gender behind ad impressions, from bid logs and provider labels.

    Steps:
      start            validate parameters, resolve the source (generate the synthetic world
                       for ``synthetic://…``), pick the 5-day window; will the run fit on
                       the data root's disk (pythia.disk_budget)
      select_providers score every label provider per country, pick one (overrides win)
      prepare_labels   one label per user from the chosen provider (pyarrow, or Spark when large)
      etl_hour         foreach over groups of hours of the day: validate, quarantine, derive
                       features, join labels, split by date (Spark; one session per task)
      join_hours       power users, resampling from global counts, the four splits,
                       reconciliation of every row (Spark)
      to_tfrecords     vocabularies/statistics from train days, TFRecord shards (pyarrow,
                       or Spark when large)
      train            foreach over model families (model[, config]): fit the global
                       candidate, then each region (started from the global model when the
                       model can); calibrate, predict
      evaluate         metrics, Bayes gauge, distributions, champions, a card
      end              export the champions' bid-time bundle

    A full disk stops any step with one line naming the folder, its free space and the fix,
    after removing the task's partial output (``full_disk``; pythia.disk_full).
    """

    config = Config("config", default=CONFIG_FILE, parser=tomllib.loads,
                    help="Deploy-time settings (TOML): geography, model hyperparameters, "
                         "@resources per step. Default: flows/pythia.toml.")

    source = Parameter("source", **param_kwargs("source"))
    date = Parameter("date", **param_kwargs("date"))
    models = Parameter("models", **param_kwargs("models"))
    regions = Parameter("regions", **param_kwargs("regions"))
    provider_overrides = Parameter("provider_overrides", **param_kwargs("provider_overrides"))
    seed = Parameter("seed", **param_kwargs("seed"))
    resample = Parameter("resample", **param_kwargs("resample"))
    drop_power_users = Parameter("drop_power_users", **param_kwargs("drop_power_users"))
    holdout_users = Parameter("holdout_users", **param_kwargs("holdout_users"))
    cap_power_users = Parameter("cap_power_users", **param_kwargs("cap_power_users"))
    power_user_threshold = Parameter("power_user_threshold",
                                     **param_kwargs("power_user_threshold"))
    allow_gaps = Parameter("allow_gaps", **param_kwargs("allow_gaps"))
    max_quarantined = Parameter("max_quarantined", **param_kwargs("max_quarantined"))
    hours_per_task = Parameter("hours_per_task", **param_kwargs("hours_per_task"))
    spark_master = Parameter("spark_master", **param_kwargs("spark_master"))
    data_root = Parameter("data_root", **param_kwargs("data_root"))
    max_epochs = Parameter("max_epochs", **param_kwargs("max_epochs"))
    age_head = Parameter("age_head", **param_kwargs("age_head"))
    prior_correction = Parameter("prior_correction", **param_kwargs("prior_correction"))
    search = Parameter("search", **param_kwargs("search"))

    @property
    def paths(self) -> RunPaths:
        """This task's run-scoped locations (a resumed run's new tasks write under its own id;
        cloned tasks keep the origin run's paths in their manifests). A step in a pod that does
        not have start's local data root stops in one line."""
        if current.step_name != "start":
            check_step_root(self.params.data_root)
        return RunPaths(self.params.data_root, current.flow_name, current.run_id)

    def full_disk(self, step: str, **task):
        """A full disk inside the block: one line naming the folder, its free space and the fix,
        after removing this task's partial output (``task``: etl_hour's hours, train's family)."""
        return full_disk_errors(step, self.paths.root, task_outputs(step, self.paths, **task),
                                resume=f"`python {_flow_file()} resume {step}`")

    def tagged_limit(self, params):
        """``params`` with a ``max_quarantined:X`` run tag applied (``resume --tag``)."""
        params, note = quarantine_limit.apply_tags(params, current.tags)
        if note:
            print(note)
        return params

    def limit_hint(self):
        """A max_quarantined stop also says how to go on by resuming this run."""
        return quarantine_limit.resume_hint(
            f"python {_flow_file()} resume --origin-run-id {current.run_id}")

    @step
    def start(self):
        """Validate parameters, resolve the source and the window."""
        values = {p.name: getattr(self, p.name) for p in PARAMETERS}
        check_remote_roots(values["data_root"], values["source"])  # on Kubernetes/Batch
        self.params = RunParams.build(values, DeployConfig.from_mapping(self.config),
                                      model_names=models.MODEL_NAMES,
                                      default_models=models.DEFAULT_MODELS).compiled()
        models.check_model_hparams(self.params.model_hparams)  # [models.*]: before the ETL
        with full_disk_errors("start", default_cache_root(), root_name="the world cache",
                              move="set PYTHIA_CACHE to a folder on a larger disk",
                              resume=f"`python {_flow_file()} run` again"):
            self.source_path, self.window, self.gaps = source.resolve(
                self.params, scheduled=source.is_scheduled_run(current.run_id))
        self.run_root = self.paths.base
        # will it fit? one line, a loud one when the estimate exceeds the free space
        self.source_bytes = disk_budget.check(self.source_path, self.window, self.paths.root,
                                              current.flow_name, current.run_id)
        # which synthetic world (None: real data): evaluate and the benchmarks check they read it
        self.world_fingerprint = source.world_fingerprint(self.source_path)
        self.stack = stack.versions()  # the driver's libraries (each train candidate has its own)
        if line := stack.lock_line():  # not the stack the README's figures came from
            print(line)
        self.hour_groups = self.params.hour_groups
        print(f"source {self.source_path}; window {self.window}; {len(self.hour_groups)} "
              f"etl tasks")
        self.next(self.select_providers)

    @step
    def select_providers(self):
        """Score providers per country from their metrics; overrides win."""
        with self.full_disk("select_providers"):
            self.provider_choice, self.provider_map, self.provider_warnings = providers.choose(
                self.source_path, self.params, self.paths)
        self.next(self.prepare_labels)

    @resources(cpu=config.resources.prepare_labels.cpu,
               memory=config.resources.prepare_labels.memory)
    @step
    def prepare_labels(self):
        """One label per user from the provider chosen for the user's country."""
        task = self.config.resources.prepare_labels
        threads.configure_task(task.cpu, memory_mb=task.memory)
        self.params = self.tagged_limit(self.params)
        with self.full_disk("prepare_labels"), self.limit_hint():
            self.labels_manifest = providers.run(  # ages moved to the test day
                self.source_path, self.provider_map, self.params, self.paths,
                as_of=source.window_of(self.window).test_date)
        self.next(self.etl_hour, foreach="hour_groups")

    @resources(cpu=config.resources.etl_hour.cpu, memory=config.resources.etl_hour.memory)
    @step
    def etl_hour(self):
        """Validate, quarantine, derive features and join labels for these hours of day."""
        task = self.config.resources.etl_hour
        threads.configure_task(task.cpu, memory_mb=task.memory, parallel=True,
                               say=self.index == 0)
        self.hours = list(self.input)
        with self.full_disk("etl_hour", hours=self.hours):
            self.manifest = etl.run_hours(self.source_path, self.hours, self.window,
                                          self.labels_manifest, self.params, self.paths)
        self.next(self.join_hours)

    @resources(cpu=config.resources.join_hours.cpu, memory=config.resources.join_hours.memory)
    @step
    def join_hours(self, inputs):
        """Power users, resampling from global class counts, the four splits, reconciliation."""
        task = self.config.resources.join_hours
        threads.configure_task(task.cpu, memory_mb=task.memory)
        self.merge_artifacts(inputs, include=["params", "source_path", "window", "gaps",
                                              "provider_choice", "provider_map", "provider_warnings",
                                              "labels_manifest", "run_root"])
        # the start step's (every branch has them; None on a run resumed from before them)
        self.world_fingerprint = getattr(inputs[0], "world_fingerprint", None)
        self.stack = getattr(inputs[0], "stack", None)
        self.hour_manifests = sorted((i.manifest for i in inputs), key=lambda m: m["hours"])
        self.params = self.tagged_limit(self.params)
        with self.full_disk("join_hours"), self.limit_hint():
            (self.split_manifest, self.reconciliation, self.resample_rates,
             self.quarantine) = etl.join_hours(self.hour_manifests, self.params, self.paths)
        self.next(self.to_tfrecords)

    @resources(cpu=config.resources.to_tfrecords.cpu,
               memory=config.resources.to_tfrecords.memory)
    @step
    def to_tfrecords(self):
        """Vocabularies and statistics from the train days; TFRecord shards per split/region."""
        task = self.config.resources.to_tfrecords
        threads.configure_task(task.cpu, memory_mb=task.memory)
        with self.full_disk("to_tfrecords"):
            self.tf_manifest, self.encoders = tfrecords.convert(self.split_manifest,
                                                                self.params, self.paths)
        unknown = input_health.country_line(self.encoders)  # 'UK': region OTHER, UTC clock
        if unknown:
            print(unknown)
        self.train_families = models.train_families(self.params.models, self.params.regions,
                                                    self.tf_manifest, self.params.search,
                                                    self.params.seed, self.params.model_hparams)
        # the regions every candidate scores out of fold: one read, one rule for all tasks
        self.fold_regions = list(models.fold_regions(self.tf_manifest))
        self.next(self.train, foreach="train_families")

    @resources(cpu=config.resources.train.cpu, memory=config.resources.train.memory)
    @step
    def train(self):
        """Fit one model family: its global candidate, then each region; predict validation
        and test days."""
        task = self.config.resources.train
        threads.configure_task(task.cpu, memory_mb=task.memory, parallel=True,
                               say=self.index == 0)
        with self.full_disk("train", family=self.input):
            # a run resumed from one made before the fold_regions artifact reads it here
            self.candidates = models.train_family(
                self.input, self.tf_manifest, self.split_manifest, self.params.train,
                self.params.etl.age_edges, self.paths, getattr(self, "fold_regions", None))
        self.next(self.evaluate)

    @card(type="blank", id="report", timeout=600)
    @resources(cpu=config.resources.evaluate.cpu, memory=config.resources.evaluate.memory)
    @step
    def evaluate(self, inputs):
        """Metrics, Bayes gauge, distributions and champions; render the report card."""
        task = self.config.resources.evaluate
        threads.configure_task(task.cpu, memory_mb=task.memory)
        self.merge_artifacts(inputs, exclude=["candidates"])
        self.candidates = [c for i in inputs for c in i.candidates]
        bundle, previous_id = runs.previous_bundle(  # a backfill: none of a later day
            current.flow_name, current.run_id, runs.user_split_of(self.split_manifest),
            str(self.window["test"][0]))
        with self.full_disk("evaluate"):
            results = evaluate.run(self.candidates, self.split_manifest, self.source_path,
                                   self.params.etl.age_edges, self.paths.reports,
                                   evaluate.bundle_scorer(bundle) if bundle else None, previous_id,
                                   baseline_models=evaluate.baseline_models_of(self.candidates),
                                   z_min=self.params.z_min,
                                   in_between_gauge=self.params.in_between_gauge,
                                   # None on a run resumed from before the record
                                   world_fingerprint=getattr(self, "world_fingerprint", None))
        self.metrics, self.champions, self.headline = (
            results["metrics"], results["champions"], results["headline"])
        self.distributions, self.gauge = results["distributions"], results["gauge"]
        self.regional_vs_global = results["regional_vs_global"]  # per region: regional vs global
        self.model_verdicts = results["model_verdicts"]  # each model against the baselines
        self.blind_twins = results["blind_twins"]  # blind twins against their sighted models
        # this run's margins pooled with earlier runs of the same data and other seeds (or None)
        self.seed_pool = results["seed_pool"] = seeds.pool_with_earlier(
            current.flow_name, seeds.seed_run_of(current.run_id, self))
        self.reports_path = self.paths.reports
        git = stack.git_text(f"{current.flow_name}/{current.run_id}")  # Metaflow's record
        evaluate.render_card(current.card["report"], results, self.reconciliation,
                             self.provider_choice, stack.report_lines(
                                 getattr(self, "stack", None), self.candidates, git))
        self.next(self.end)

    @step
    def end(self):
        """Export the champions' bid-time bundle and say where to look."""
        user_split = runs.user_split_of(self.split_manifest)
        test_day = str(self.window["test"][0])  # a kept model's age counts in days of data
        # the slots and where each model was blessed: the next run keeps from these
        self.bundle_models = evaluate.choose_bundle_models(
            self.champions, self.candidates,
            runs.previous_champions(current.flow_name, current.run_id, user_split,
                                    self.encoders, test_day, self.params.max_kept_days),
            current.pathspec, baseline_models=evaluate.baseline_models_of(self.candidates),
            provenance={"blessed_date": test_day, "user_split": list(user_split),
                        "age_edges": self.encoders.get("age_edges")})
        with self.full_disk("end"):
            self.bundle_path = scoring.export_champions(self.bundle_models, self.encoders,
                                                        self.params.geo, current.pathspec,
                                                        self.paths.bundle)
        print(runs.summary_text(self, current.flow_name, current.run_id, _flow_file()))


def _flow_file() -> str:
    """This file as the user can type it from the folder the run started in."""
    rel = os.path.relpath(os.path.abspath(__file__))
    return os.path.abspath(__file__) if rel.startswith("..") else rel


if __name__ == "__main__":
    DemoFlow()
