"""The cluster executors: packs as tasks (``slurm`` through submitit, ``ray``), evaluation as tasks of its own.

Tiny studies (beta-VAE with 4 latents, a few steps of batch 8 on the procedural
dSprites, CPU) go through the real executors into a temporary SQLite store:
runs are trained in packs (pack size 2) by training tasks and evaluated by one
task per run, every run key ends FINISHED exactly once with the scores the
``local`` executor gives, and a second invocation submits nothing. Ray is large
and not installed by CI, so by default the Ray path runs on a fake ``ray`` module
modelled on ray 2.60 (remote functions run inline, their arguments pickled; a
task whose "process died" (``SystemExit``) retried, then WorkerCrashedError; a
task's own exception wrapped in RayTaskError; a trained run must be free for an
evaluation task in another process). The ``-m slow`` tests run it on a real
local Ray cluster where ``disentbench[ray]`` is installed (skipped otherwise):
a study, a worker killed mid-pack (os._exit) and retried, Ctrl-C mid-study.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import types
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers import DIE_ONCE_ENV, poisoned_vae_registry

from disentbench.core.cli.main import main
from disentbench.core.config.load import load_study_config
from disentbench.core.study.jobs import RunJob, group_into_tasks
from disentbench.core.study.plan import plan_tasks
from disentbench.core.study.run import run_study
from disentbench.plugins.executors import cluster
from disentbench.plugins.executors.cluster import MissingExtra, RayConfig, SlurmConfig, SlurmExecutor


def _config(tmp_path: Path, name: str, executor: dict, *, pack_size=2, steps=5, checkpoint_every=10_000) -> dict:
    return {
        "name": name,
        "datasets": ["dsprites_procedural"],
        "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}, "params": {"num_latent": 4}}],
        "seeds": 1,
        "training": {
            "steps": steps,
            "batch_size": 8,
            "log_every": 5,
            "checkpoint_every": checkpoint_every,
            "device": "cpu",
            "pack_size": pack_size,
            "checkpoint_dir": str(tmp_path / f"checkpoints_{name}"),
        },
        "evaluation": {"metrics": [{"name": "mig", "params": {"num_train": 100}}]},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "executor": executor,
    }


def _client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _runs_by_key(tmp_path: Path, experiment: str) -> dict[str, list]:
    client = _client(tmp_path)
    exp = client.get_experiment_by_name(experiment)
    by_key: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], "tags.`disentbench.kind` = 'run'"):
        by_key.setdefault(run.data.tags["run_key"], []).append(run)
    return by_key


def _assert_each_run_finished_once(tmp_path: Path, experiment: str, expected: int) -> dict[str, object]:
    client = _client(tmp_path)
    by_key = _runs_by_key(tmp_path, experiment)
    assert len(by_key) == expected, {k: [r.info.status for r in v] for k, v in by_key.items()}
    for key, key_runs in by_key.items():
        assert [r.info.status for r in key_runs] == ["FINISHED"], key
        assert "eval/mean/mig/discrete_mig" in key_runs[0].data.metrics
        names = {a.path for a in client.list_artifacts(key_runs[0].info.run_id)}
        assert {"config.yaml", "scores.json", "images", "checkpoints"} <= names, names
    return {key: runs[0] for key, runs in by_key.items()}


def _local_scores(tmp_path: Path, registry, config: dict) -> dict[str, dict[str, float]]:
    """The same study through the local executor (its own experiment and checkpoints): scores by run key."""
    raw = yaml.safe_load(yaml.safe_dump(config))
    raw.update(name=config["name"] + "_local", executor={"name": "local"})
    raw["training"]["checkpoint_dir"] += "_local"
    result = run_study(load_study_config(raw, registry), registry=registry, progress=False)
    assert [o.status for o in result.outcomes] == ["finished"] * len(result.outcomes), [o.error for o in result.outcomes]
    return {o.spec.run_key: o.scores for o in result.outcomes}


def _run_twice(tmp_path: Path, registry, config: dict) -> list:
    assert Path.cwd() == tmp_path  # a SQLite store keeps artifacts in ./mlruns of the process creating the experiment
    study = load_study_config(config, registry)
    first = run_study(study, registry=registry, progress=False)
    assert [o.status for o in first.outcomes] == ["finished", "finished"], [o.error for o in first.outcomes]
    assert all("eval/mean/mig/discrete_mig" in o.scores for o in first.outcomes)
    second = run_study(study, registry=registry, progress=False)  # idempotent: nothing left to do
    assert [o.status for o in second.outcomes] == ["skipped", "skipped"]
    runs = _assert_each_run_finished_once(tmp_path, config["name"], 2)
    for run in runs.values():  # trained as one pack by a training task, evaluated by a task of its own
        assert run.data.tags["pack_size"] == str(config["training"]["pack_size"]), run.data.tags
        assert run.data.tags["disentbench.stage"] == "evaluated"
        assert "train/model_steps_per_second" in run.data.metrics
    return first.outcomes


# -- slurm (submitit) ------------------------------------------------------------------


def test_slurm_local_backend_trains_a_pack_per_task_and_scores_like_local(tmp_path, registry, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pytest.importorskip("submitit", reason="the slurm executor needs the extra: pip install 'disentbench[slurm]'")
    folder = tmp_path / "submitit"
    executor = {
        "name": "slurm",
        "params": {"cluster": "local", "folder": str(folder), "cpus_per_task": 1, "eval_cpus_per_task": 1,
                   "timeout_min": 10, "poll_seconds": 1},
    }  # fmt: skip
    config = _config(tmp_path, "slurm_local", executor)
    outcomes = _run_twice(tmp_path, registry, config)
    assert len({o.run_id for o in outcomes}) == 2
    # one training task (the pack of two) and one evaluation task per run, all in submitit processes
    results = sorted(folder.glob("*_result.pkl"))
    assert len(results) == 3, results
    tasks = [pickle.loads((folder / p.name.replace("_0_result.pkl", "_submitted.pkl")).read_bytes()) for p in results]
    assert sorted(type(t.function).__name__ for t in tasks) == ["EvaluateTask", "EvaluateTask", "TrainTask"]
    assert [len(t.args[0]) for t in tasks if type(t.function).__name__ == "TrainTask"] == [2]
    local = _local_scores(tmp_path, registry, config)
    assert {o.spec.run_key: o.scores for o in outcomes} == local


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the task's process through /proc")
def test_slurm_local_task_preempted_mid_pack_is_requeued_and_resumes(tmp_path, registry, monkeypatch):
    """A real preemption signal (submitit's SIGUSR2) to the training task's process once every run of
    its pack has a checkpoint: submitit requeues the task, which takes over the same MLflow runs and
    resumes them from their checkpoints, in the same invocation."""
    import threading
    import time

    pytest.importorskip("submitit", reason="the slurm executor needs the extra: pip install 'disentbench[slurm]'")
    monkeypatch.chdir(tmp_path)
    executor = {
        "name": "slurm",
        "params": {"cluster": "local", "folder": str(tmp_path / "submitit"), "cpus_per_task": 1,
                   "eval_cpus_per_task": 1, "timeout_min": 10, "poll_seconds": 0.5},
    }  # fmt: skip
    config = _config(tmp_path, "slurm_preempt", executor, steps=200, checkpoint_every=10)
    handles: list = []
    submit = SlurmExecutor._submit

    def capture(self, executor, task, items):
        submitted = submit(self, executor, task, items)
        if isinstance(task, cluster.TrainTask):
            handles.extend(submitted)
        return submitted

    monkeypatch.setattr(SlurmExecutor, "_submit", capture)
    checkpoints = Path(config["training"]["checkpoint_dir"])
    preempted: list[int] = []

    def preempt_after_first_checkpoints():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not preempted:
            if handles and len(list(checkpoints.glob("*/checkpoint.pt"))) == 2:
                import torch

                steps = [torch.load(p, weights_only=True)["step"] for p in checkpoints.glob("*/checkpoint.pt")]
                # what Slurm sends a task before preempting it (submitit's local controller, handles[0]'s
                # process, does not forward it: the signal goes to the task process itself)
                for pid in _descendants(handles[0]._process.pid):
                    os.kill(pid, signal.SIGUSR2)
                preempted.append(min(steps))
            time.sleep(0.02)

    watcher = threading.Thread(target=preempt_after_first_checkpoints, daemon=True)
    watcher.start()
    result = run_study(load_study_config(config, registry), registry=registry, progress=False)
    watcher.join()
    assert preempted and preempted[0] < 200, "the task was not preempted mid-pack"
    assert [o.status for o in result.outcomes] == ["finished", "finished"], [o.error for o in result.outcomes]
    runs = _assert_each_run_finished_once(tmp_path, "slurm_preempt", 2)  # the requeued task took the runs over
    for run in runs.values():
        assert int(run.data.tags["resumed_from_step"]) >= 10, run.data.tags
        assert run.data.tags["pack_size"] == "2"


class _FakeWorker:
    """Enough of core.study.Worker for the executor loop; returns plain tuples (no torch in the task)."""

    device = "cpu"
    pack_size = 1

    def __init__(self):
        self.config_data = {"training": {"checkpoint_dir": "relative/checkpoints"}}
        self.tracking_uri = "sqlite:///relative/mlflow.db"
        self.progress = True

    def with_device(self, device):
        clone = _FakeWorker()
        clone.device = device
        return clone

    def train_task(self, jobs):
        outcomes = []
        for job in jobs:
            if job.spec == "boom":
                raise RuntimeError("node lost\nsecond line of a long traceback")
            outcomes.append((job.spec, self.device, Path(self.config_data["training"]["checkpoint_dir"]).is_absolute()))
        return outcomes


class _Job:  # the executor reads only .spec (for a failed outcome)
    def __init__(self, spec):
        self.spec = spec


def test_slurm_executor_reports_a_failed_task_and_continues(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="the slurm executor needs the extra: pip install 'disentbench[slurm]'")
    import pdb

    import torch

    # submitit's debug backend runs tasks in this process and opens pdb on a failure: not here
    monkeypatch.setattr(pdb, "post_mortem", lambda *args: None)
    threads = torch.get_num_threads()
    executor = SlurmExecutor(SlurmConfig(cluster="debug", folder=tmp_path / "sub", cpus_per_task=1, poll_seconds=0.1))
    try:
        outcomes = list(executor.run([_Job("a"), _Job("boom"), _Job("c")], _FakeWorker()))
    finally:
        torch.set_num_threads(threads)
    assert ("a", "cpu", True) in outcomes and ("c", "cpu", True) in outcomes, outcomes  # cpu; checkpoint_dir absolute
    (failed,) = [o for o in outcomes if not isinstance(o, tuple)]
    assert failed.spec == "boom" and failed.status == "failed"
    assert "\n" not in failed.error and "node lost" in failed.error and "re-run the study" in failed.error, failed.error


def test_slurm_training_task_requeues_itself_on_preemption(tmp_path):
    submitit = pytest.importorskip("submitit", reason="the slurm executor needs the extra")
    task = cluster.TrainTask(_FakeWorker(), "cuda", 4)
    jobs = [_Job("a"), _Job("b")]
    again = task.checkpoint(jobs)  # what submitit calls on SIGUSR2 (time limit, preemption) before requeueing
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function is task and again.args == (jobs,)
    assert task.worker.evaluate_separately and task.worker.device == "cuda"


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="the slurm executor needs the extra: pip install 'disentbench[slurm]'")
    import shutil

    import submitit.slurm.slurm as submitit_slurm

    which = shutil.which
    monkeypatch.setattr(submitit_slurm.shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}" if name == "srun" else which(name, *a, **k))
    config = SlurmConfig(
        cluster="slurm", partition="gpu", gpus_per_task=1, cpus_per_task=8, mem_gb=32, timeout_min=720,
        array_parallelism=64, folder=tmp_path / "sub" / "%j", setup=["source /shared/venv/bin/activate"],
        slurm_additional_parameters={"account": "proj", "qos": "normal"},
    )  # fmt: skip
    executor = SlurmExecutor(config)
    executor.check()  # builds the submitit executor: options are validated before the study writes anything
    script = executor._submitit._executor._make_submission_file_text("python -m task", "uid")
    for line in ["--partition=gpu", "--gpus-per-task=1", "--cpus-per-task=8", "--mem=32GB", "--time=720",
                 "--account=proj", "--qos=normal", "--job-name=disentbench", f"--output={tmp_path}/sub/%j/"]:  # fmt: skip
        assert f"#SBATCH {line}" in script, (line, script)
    assert "source /shared/venv/bin/activate" in script
    assert executor._submitit._executor.parameters["array_parallelism"] == 64
    assert executor._submitit._executor.max_num_timeout == 3  # preempted / timed-out training tasks are requeued
    # evaluation tasks: the same account and setup, no GPU, their own cores and time
    evaluation = executor._evaluation._executor._make_submission_file_text("python -m task", "uid")
    for line in ["--partition=gpu", "--cpus-per-task=4", "--time=120", "--account=proj", "--job-name=disentbench-eval"]:
        assert f"#SBATCH {line}" in evaluation, (line, evaluation)
    assert "--gpus-per-task" not in evaluation


def test_missing_extra_is_a_one_line_error_and_writes_nothing(tmp_path, monkeypatch, registry):
    import yaml

    monkeypatch.chdir(tmp_path)
    for module in ("ray", "submitit"):
        monkeypatch.setitem(sys.modules, module, None)  # `import ray` raises ImportError
    for name, extra in (("ray", "ray"), ("slurm", "slurm")):
        config = _config(tmp_path, f"missing_{name}", {"name": name})
        load_study_config(config, registry)  # validating the config needs no extra
        with pytest.raises(MissingExtra, match=rf"pip install 'disentbench\[{extra}\]'"):
            run_study(load_study_config(config, registry), registry=registry, progress=False)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = CliRunner().invoke(main, ["run", str(path), "-q"])
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: the {name!r} executor needs"), lines
        assert lines[0].endswith(f"pip install 'disentbench[{extra}]'"), lines
    assert not (tmp_path / "mlflow.db").exists()


def test_cluster_configs_validate_without_the_extras():
    assert SlurmConfig().cluster is None and SlurmConfig().gpus_per_task is None
    assert RayConfig(num_gpus_per_task=0.25).num_gpus_per_task == 0.25
    with pytest.raises(ValueError, match="whole number"):
        RayConfig(num_gpus_per_task=1.5)
    with pytest.raises(ValueError):
        SlurmConfig(cluster="pbs")


# -- ray ----------------------------------------------------------------------------------


def _start_local_ray(**options):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'disentbench[ray]')")
    if ray.is_initialized():
        ray.shutdown()
    # started before the test changes folder: the workers run elsewhere than the study, as on a cluster
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False, **options)
    return ray


@pytest.fixture
def local_ray_cluster():
    ray = _start_local_ray()
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def local_ray_cluster_killing_a_pack(tmp_path, monkeypatch):
    """A local Ray cluster whose worker process that trains a pack of two dies (os._exit) right after
    both runs wrote their step-10 checkpoints, once (helpers.die_once_after_checkpoints); the marker
    file it leaves holds the dead process's pid."""
    marker = tmp_path / "killed_worker.pid"
    tests = str(Path(__file__).resolve().parent)  # the workers import the hook from tests/helpers.py
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv(DIE_ONCE_ENV, f"10 2 {marker} {os.getpid()}")
    ray = _start_local_ray(runtime_env={"worker_process_setup_hook": "helpers.die_once_after_checkpoints"})
    try:
        yield ray, marker
    finally:
        ray.shutdown()


@pytest.mark.slow  # over a minute (a local Ray cluster starts torch workers): keeps the default suite under 15 min
def test_ray_executor_on_a_local_ray_cluster(tmp_path, registry, local_ray_cluster, monkeypatch):
    monkeypatch.chdir(tmp_path)
    executor = {"name": "ray", "params": {"num_cpus_per_task": 1, "num_cpus_per_evaluation": 1}}
    config = _config(tmp_path, "ray_local", executor)
    outcomes = _run_twice(tmp_path, registry, config)
    assert len({o.run_id for o in outcomes}) == 2
    assert {o.spec.run_key: o.scores for o in outcomes} == _local_scores(tmp_path, registry, config)
    assert local_ray_cluster.is_initialized(), "the executor must not shut down a cluster it did not start"


@pytest.mark.slow  # about a minute: a local Ray cluster, a worker killed and its task retried
def test_ray_task_killed_mid_pack_on_a_local_ray_cluster_resumes_its_runs(
    tmp_path, registry, local_ray_cluster_killing_a_pack, monkeypatch
):
    ray, marker = local_ray_cluster_killing_a_pack
    monkeypatch.chdir(tmp_path)
    executor = {"name": "ray", "params": {"num_cpus_per_task": 1, "num_cpus_per_evaluation": 1, "max_retries": 2}}
    config = _config(tmp_path, "ray_killed", executor, steps=20, checkpoint_every=10)
    config["tracking"]["uri"] = "sqlite:///mlflow.db"  # relative to the study's folder, not the Ray workers'
    local = _local_scores(tmp_path, registry, config)  # in this process: the kill is armed in Ray workers only
    result = run_study(load_study_config(config, registry), registry=registry, progress=False)
    assert [o.status for o in result.outcomes] == ["finished", "finished"], [o.error for o in result.outcomes]
    assert marker.exists(), "no Ray worker died: the kill was not armed"
    runs = _assert_each_run_finished_once(tmp_path, "ray_killed", 2)  # Ray's retry took over the runs: no duplicates
    for run in runs.values():  # trained on as one pack from the checkpoints the killed worker wrote
        assert run.data.tags["resumed_from_step"] == "10" and run.data.tags["pack_size"] == "2", run.data.tags
        assert run.data.tags["disentbench.owner_pid"] != marker.read_text()  # evaluated by a live process
    history = _client(tmp_path).get_metric_history(next(iter(runs.values())).info.run_id, "train/total")
    assert sorted({m.step for m in history}) == [5, 10, 15, 20]
    for outcome in result.outcomes:
        assert outcome.scores == pytest.approx(local[outcome.spec.run_key], abs=1e-6)
    assert ray.is_initialized(), "the executor must not shut down a cluster it did not start"


@pytest.mark.slow  # about a minute: a local Ray cluster
def test_ctrl_c_during_a_ray_study_stops_its_tasks_and_the_rerun_resumes(tmp_path, registry, local_ray_cluster, monkeypatch):
    import threading
    import time

    monkeypatch.chdir(tmp_path)
    executor = {"name": "ray", "params": {"num_cpus_per_task": 1, "num_cpus_per_evaluation": 1}}
    config = _config(tmp_path, "ray_ctrl_c", executor, steps=1000, checkpoint_every=50)
    checkpoints = Path(config["training"]["checkpoint_dir"])
    main_thread = threading.get_ident()

    def ctrl_c_once_training_checkpointed():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(list(checkpoints.glob("*/checkpoint.pt"))) < 2:
            time.sleep(0.2)
        signal.pthread_kill(main_thread, signal.SIGINT)

    study = load_study_config(config, registry)
    threading.Thread(target=ctrl_c_once_training_checkpointed, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_study(study, registry=registry, progress=False)
    assert local_ray_cluster.is_initialized(), "the executor must not shut down a cluster it did not start"
    interrupted = _runs_by_key(tmp_path, "ray_ctrl_c")
    assert sorted(r.info.status for (r,) in interrupted.values()) == ["KILLED", "KILLED"], interrupted
    second = run_study(study, registry=registry, progress=False)
    assert [o.status for o in second.outcomes] == ["finished", "finished"], [o.error for o in second.outcomes]
    runs = _assert_each_run_finished_once(tmp_path, "ray_ctrl_c", 2)
    assert {r.info.run_id for r in runs.values()} == {r.info.run_id for (r,) in interrupted.values()}
    assert all(int(r.data.tags["resumed_from_step"]) >= 50 for r in runs.values())


# -- ray through a fake ray module -------------------------------------------------------


class _FakeRay(types.ModuleType):
    """Enough of Ray for the executor, as ray 2.60 behaves on a local cluster: remote functions run
    inline (their arguments pickled, as Ray ships them) when waited on; a task whose process "dies"
    (SystemExit: a real worker exits on it) is rerun up to its ``max_retries`` and then raises
    WorkerCrashedError (the process's own message lost); an exception the task raises is not
    retried and comes back wrapped, as RayTaskError with the original as ``cause``. Ray may run a
    run's evaluation task in another live worker process, or on another node, than its training
    task: every run a training task hands back trained must be free of its lease by then."""

    class _Ref:
        def __init__(self, fn, args, options):
            self.fn, self.args, self.options = fn, pickle.dumps(args), options

    class WorkerCrashedError(Exception):
        pass

    class RayTaskError(Exception):
        def __init__(self, name, cause):
            super().__init__(f"ray::{name}() (pid={os.getpid()}, ip=127.0.0.1)\n  {type(cause).__name__}: {cause}")
            self.cause = cause

    def __init__(self):
        super().__init__("ray")
        self.initialized = False
        self.calls: list[tuple[str, int]] = []  # (function name, attempt)
        self.before_task = None  # a hook: called with the function's name before each attempt

    def is_initialized(self):
        return self.initialized

    def init(self, **_):
        self.initialized = True

    def shutdown(self):
        self.initialized = False

    def cluster_resources(self):
        return {"CPU": 2.0}

    def put(self, value):
        return value

    def remote(self, **options):
        ray = self

        class _Remote:
            def __init__(self, fn):
                self.fn = fn

            def remote(self, *args):
                return ray._Ref(self.fn, args, options)

        return _Remote

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        name = ref.fn.__name__
        for attempt in range(ref.options.get("max_retries", 3) + 1):
            self.calls.append((name, attempt))
            if self.before_task is not None:
                self.before_task(name)
            args = pickle.loads(ref.args)
            try:
                result = ref.fn(*args)
            except SystemExit:  # the process died: Ray retries the task
                continue
            except Exception as exc:  # the task raised: not retried (no retry_exceptions)
                raise self.RayTaskError(name, exc) from None
            if name == "_ray_train":
                _assert_handed_over(args[0].worker.tracking_uri, result)
            return result
        raise self.WorkerCrashedError("The worker died unexpectedly while executing this task. "
                                      "Check python-core-worker-*.log files for more information.")

    def cancel(self, ref, force=False):
        pass


def _assert_handed_over(uri: str, outcomes: list) -> None:
    from mlflow.tracking import MlflowClient

    from disentbench.core.tracking.tracker import live_lease

    client = MlflowClient(tracking_uri=uri)
    for outcome in outcomes:
        if outcome.status == "trained":
            lease = live_lease(client.get_run(outcome.run_id))
            assert lease is None, f"trained run {outcome.run_id} still leased by {lease}: no other process can evaluate it"


@pytest.fixture
def fake_ray(monkeypatch):
    import torch

    ray = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    threads = torch.get_num_threads()
    yield ray
    torch.set_num_threads(threads)


def _die_after_first_checkpoint(monkeypatch, runs: int) -> dict:
    """The first time every run of a pack has written its step-10 checkpoint, the process dies."""
    from disentbench.core.training.trainer import Trainer

    save = Trainer.save_checkpoint
    state = {"saved": 0, "died": False}

    def save_then_die(self):
        save(self)
        if self.step == 10 and not state["died"]:
            state["saved"] += 1
            if state["saved"] == runs:
                state["died"] = True
                raise SystemExit("node lost")

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    return state


def test_ray_runs_packs_then_cpu_evaluations_and_scores_like_local(tmp_path, registry, fake_ray, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, "ray_fake", {"name": "ray", "params": {"num_cpus_per_task": 1}})
    seen: list[str] = []

    def status_while_running(name):  # `status` from another shell, as each evaluation task starts
        if name == "_ray_evaluate" and not seen:
            path = tmp_path / "study.yaml"
            path.write_text(yaml.safe_dump(config))
            seen.append(CliRunner().invoke(main, ["status", str(path)]).output)

    fake_ray.before_task = status_while_running
    outcomes = _run_twice(tmp_path, registry, config)
    assert [name for name, _ in fake_ray.calls] == ["_ray_train", "_ray_evaluate", "_ray_evaluate"]
    assert "2 runs: 2 evaluating" in seen[0], seen  # trained by the GPU task, evaluation tasks pending
    assert {o.spec.run_key: o.scores for o in outcomes} == _local_scores(tmp_path, registry, config)
    assert not fake_ray.is_initialized(), "a cluster the executor started is shut down after the study"


def test_ray_task_killed_mid_pack_is_retried_and_resumes_its_runs(tmp_path, registry, fake_ray, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, "ray_retry", {"name": "ray", "params": {"max_retries": 2}}, steps=20, checkpoint_every=10)
    local = _local_scores(tmp_path, registry, config)  # uninterrupted, before the kill is armed
    died = _die_after_first_checkpoint(monkeypatch, runs=2)
    result = run_study(load_study_config(config, registry), registry=registry, progress=False)
    assert died["died"] and [o.status for o in result.outcomes] == ["finished", "finished"]
    assert ("_ray_train", 1) in fake_ray.calls  # the training task ran a second time
    runs = _assert_each_run_finished_once(tmp_path, "ray_retry", 2)  # the retry took over the runs: no duplicates
    for run in runs.values():
        assert run.data.tags["resumed_from_step"] == "10" and run.data.tags["pack_size"] == "2"
    history = _client(tmp_path).get_metric_history(next(iter(runs.values())).info.run_id, "train/total")
    assert [m.step for m in history] == [5, 10, 15, 20]  # each step once, in order
    for outcome in result.outcomes:
        assert outcome.scores == pytest.approx(local[outcome.spec.run_key], abs=1e-6)


def test_ray_task_retried_on_another_node_waits_out_the_lost_nodes_lease(tmp_path, registry, fake_ray, monkeypatch):
    """The retry of a task lost with its node: the dead attempt's lease is still alive (its heartbeat is recent,
    its pid on another host cannot be checked); the retry waits for it to lapse, then resumes the runs."""
    from disentbench.core.tracking import tracker as tracking

    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, "ray_node", {"name": "ray", "params": {"max_retries": 1}}, steps=20, checkpoint_every=10)
    died = _die_after_first_checkpoint(monkeypatch, runs=2)

    def lost_node_leases(name):  # before the retry: the runs look leased by the live-looking process of a lost node
        if fake_ray.calls[-1] == ("_ray_train", 1):
            client = _client(tmp_path)
            for (run,) in _runs_by_key(tmp_path, "ray_node").values():
                tags = {tracking.TAG_OWNER: "lost-node-owner", tracking.TAG_OWNER_HOST: "lost-node",
                        tracking.TAG_OWNER_PID: "4242", tracking.TAG_HEARTBEAT: f"{__import__('time').time():.3f}",
                        tracking.TAG_LEASE_SECONDS: "2"}  # fmt: skip
                for key, value in tags.items():
                    client.set_tag(run.info.run_id, key, value)
                assert tracking.live_lease(client.get_run(run.info.run_id)) is not None

    fake_ray.before_task = lost_node_leases
    result = run_study(load_study_config(config, registry), registry=registry, progress=False)
    assert died["died"] and [o.status for o in result.outcomes] == ["finished", "finished"], result.outcomes
    runs = _assert_each_run_finished_once(tmp_path, "ray_node", 2)
    assert all(r.data.tags["resumed_from_step"] == "10" for r in runs.values())


def test_ray_task_out_of_retries_fails_and_the_next_invocation_resumes(tmp_path, registry, fake_ray, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, "ray_lost", {"name": "ray", "params": {"max_retries": 0}}, steps=20, checkpoint_every=10)
    died = _die_after_first_checkpoint(monkeypatch, runs=2)
    study = load_study_config(config, registry)
    first = run_study(study, registry=registry, progress=False)
    assert died["died"] and [o.status for o in first.outcomes] == ["failed", "failed"]
    assert all("WorkerCrashedError" in o.error and "re-run the study" in o.error for o in first.outcomes), first.outcomes
    left = _runs_by_key(tmp_path, "ray_lost")
    assert [[r.info.status for r in runs] for runs in left.values()] == [["RUNNING"], ["RUNNING"]]
    second = run_study(study, registry=registry, progress=False)
    assert [o.status for o in second.outcomes] == ["finished", "finished"]
    runs = _assert_each_run_finished_once(tmp_path, "ray_lost", 2)
    assert {r.info.run_id for r in runs.values()} == {rs[0].info.run_id for rs in left.values()}  # same MLflow runs
    assert all(r.data.tags["resumed_from_step"] == "10" for r in runs.values())


def test_ray_nan_run_fails_alone_inside_its_pack(tmp_path, fake_ray, monkeypatch):
    from disentbench.core.study import context

    monkeypatch.chdir(tmp_path)
    registry = poisoned_vae_registry()
    monkeypatch.setattr(context, "get_plugin_manager", lambda: registry)  # the task's process finds the test model
    config = _config(tmp_path, "ray_nan", {"name": "ray"})
    config["models"] = [{"name": "poisoned_vae", "sweep": {"poison": [0.0, 1.0]}, "params": {"num_latent": 4}}]
    result = run_study(load_study_config(config, registry), registry=registry, progress=False)
    assert [o.status for o in result.outcomes] == ["finished", "failed"], [o.error for o in result.outcomes]
    assert "non-finite loss" in result.outcomes[1].error
    assert [name for name, _ in fake_ray.calls] == ["_ray_train", "_ray_evaluate"]  # one pack; only the good run evaluated
    client = _client(tmp_path)
    good, bad = (client.get_run(o.run_id) for o in result.outcomes)
    assert good.info.status == "FINISHED" and good.data.tags["pack_size"] == "2"
    assert bad.info.status == "FAILED" and bad.data.tags["error"].startswith("NonFiniteLoss")


# -- the dry-run plan ----------------------------------------------------------------------


def test_tasks_split_pack_groups_evenly():
    specs = [_Spec("beta_vae", i) for i in range(300)] + [_Spec("factor_vae", i) for i in range(10)]
    jobs = [RunJob(spec, "", None, i + 1, len(specs)) for i, spec in enumerate(specs)]
    tasks = group_into_tasks(jobs, 256, key=lambda job: job.spec.model)
    assert [len(t) for t in tasks] == [150, 150, 10]  # not 256 + 44: no straggler task
    assert [job.spec.index for job in tasks[1]] == list(range(150, 300))
    assert [len(t) for t in group_into_tasks(jobs, 1, key=lambda job: job.spec.model)] == [1] * 310


class _Spec:
    def __init__(self, model, index, steps=1000):
        self.model, self.index, self.steps, self.dataset = model, index, steps, "d"
        self.dataset_params, self.model_params, self.swept, self.batch_size = {}, {}, {}, 64


def test_plan_estimates_gpu_hours_and_wall_time():
    specs = [_Spec("beta_vae", i) for i in range(30)]
    plan = plan_tasks(specs, 8, model_steps_per_second=100.0)
    assert [t.runs for t in plan.tasks] == [8, 8, 7, 7]
    assert plan.gpu_hours == pytest.approx(30 * 1000 / 100 / 3600)
    assert plan.wall_seconds(1) == pytest.approx(300.0)
    assert plan.wall_seconds(2) == pytest.approx(150.0)  # 80 + 70 on each GPU
    assert plan.wall_seconds(64) == pytest.approx(80.0)  # the longest task


def test_dry_run_prints_the_cluster_plan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, "plan", {"name": "local"}, pack_size=8, steps=1000)
    config["seeds"] = 15  # 2 betas x 15 seeds: one pack group of 30 runs
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    args = ["run", "s.yaml", "--dry-run", "--executor", "slurm", "--model-steps-per-second", "100", "--gpus", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "slurm: 4 training tasks" in result.output and "2 x 8 runs, 2 x 7 runs" in result.output, result.output
    assert "30 evaluation tasks" in result.output and "0.1 GPU-hours" in result.output
    assert "2 GPUs:    2.5 min" in result.output
    assert not (tmp_path / "mlflow.db").exists()  # a dry run writes nothing
    local = CliRunner().invoke(main, ["run", "s.yaml", "--dry-run"])
    assert local.exit_code == 0 and "training tasks" not in local.output  # the local executor has no tasks to plan
    bad = CliRunner().invoke(main, [*args[:5], "--model-steps-per-second", "0"])
    assert bad.exit_code == 2 and "--model-steps-per-second 0 must be positive" in bad.output


def test_dry_run_of_the_full_study_on_64_gpus():
    root = Path(__file__).resolve().parent.parent
    result = CliRunner().invoke(main, ["run", str(root / "examples" / "study_v1.yaml"), "--dry-run", "--executor", "ray",
                                       "--gpus", "64"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ray: 42 training tasks" in result.output and "42 x 300 runs" in result.output
    assert "12600 evaluation tasks" in result.output
    # (10,500 x 300,000 + 2,100 FactorVAE runs x 150,000) model-steps at 8,625/s
    assert "111.6 GPU-hours" in result.output
    assert "64 GPUs:      2.9 h  (42 GPUs busy at the start)" in result.output
