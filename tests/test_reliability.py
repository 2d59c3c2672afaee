"""Resumable, idempotent studies: kills, races and concurrent writers lose nothing and duplicate nothing."""

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import registry_with_model

CLI = [sys.executable, "-m", "disentbench.core.cli.main"]


def _study(
    tmp_path: Path,
    name: str,
    *,
    steps: int = 10,
    seeds: int = 2,
    executor=None,
    checkpoint_every: int = 1000,
    store: Path | None = None,
    representations=("mean",),
    log_every: int = 5,
    pack_size: int = 1,
) -> Path:
    """A 2 x ``seeds`` beta-VAE study in ``tmp_path`` (its checkpoints there too), tracked in ``store``
    (default ``tmp_path/mlflow.db``)."""
    config = {
        "name": name,
        "datasets": ["dsprites_procedural"],
        "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}, "params": {"num_latent": 4}}],
        "seeds": seeds,
        "training": {
            "steps": steps,
            "batch_size": 8,
            "log_every": log_every,
            "pack_size": pack_size,
            "checkpoint_every": checkpoint_every,
            "device": "cpu",
            "checkpoint_dir": str(tmp_path / "checkpoints"),
        },
        "evaluation": {
            "metrics": [{"name": "mig", "params": {"num_train": 100}}],
            "representations": list(representations),
        },
        "tracking": {"uri": f"sqlite:///{store or tmp_path / 'mlflow.db'}"},
    }
    if executor:
        config["executor"] = executor
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env():
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _runs_by_key(tmp_path: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`disentbench.kind` = 'run'")
    grouped = {}
    for run in runs:
        grouped.setdefault(run.data.tags["run_key"], []).append(run)
    return grouped


def _assert_each_key_finished_once(tmp_path, experiment, expected):
    grouped = _runs_by_key(tmp_path, experiment)
    assert len(grouped) == expected, {k: [r.info.status for r in v] for k, v in grouped.items()}
    for key, runs in grouped.items():
        assert [r.info.status for r in runs] == ["FINISHED"], (key, [r.info.status for r in runs])
        assert "eval/mean/mig/discrete_mig" in runs[0].data.metrics


def test_multiprocess_executor_four_writers_one_sqlite_store(tmp_path):
    path = _study(tmp_path, "mp", seeds=2, executor={"name": "multiprocess", "params": {"workers": 4}})
    result = subprocess.run(CLI + ["run", str(path), "-q"], capture_output=True, text=True, env=_env(), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_each_key_finished_once(tmp_path, "mp", 4)


def test_two_racing_invocations_never_duplicate_a_run(tmp_path):
    path = _study(tmp_path, "race", seeds=2)
    # create the store first so both processes race on runs, not on schema creation
    subprocess.run(CLI + ["status", str(path)], capture_output=True, env=_env(), check=True, timeout=300)
    procs = [
        subprocess.Popen(CLI + ["run", str(path), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err.decode()[-3000:]
    _assert_each_key_finished_once(tmp_path, "race", 4)


# Two targeted kill points (mid-training right after a checkpoint; right after a run finished,
# i.e. while the next one starts) and two seeded random times, which land in whatever phase
# the machine is in then: start-up, training, checkpointing, evaluation or logging. The second
# random time runs with -m slow (each kill costs ~25 s; the default suite keeps one of them).
_RANDOM_DELAYS = [round(random.Random(seed).uniform(1.5, 6.0), 2) for seed in (1, 2)]


@pytest.mark.parametrize(
    "kill_when",
    ["checkpoint", "first_run_finished", f"after:{_RANDOM_DELAYS[0]}", pytest.param(f"after:{_RANDOM_DELAYS[1]}", marks=pytest.mark.slow)],
)
def test_sigkill_then_rerun_finishes_every_run_exactly_once(tmp_path, kill_when):
    path = _study(tmp_path, "killed", steps=40, seeds=1, checkpoint_every=10)
    proc = subprocess.Popen(CLI + ["run", str(path), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 600
    checkpoints = tmp_path / "checkpoints"
    started = time.time()
    while time.time() < deadline and proc.poll() is None:
        if kill_when.startswith("after:") and time.time() - started >= float(kill_when.split(":")[1]):
            break
        if kill_when == "checkpoint" and list(checkpoints.glob("*/checkpoint.pt")):
            break
        if kill_when == "first_run_finished" and (tmp_path / "mlflow.db").exists():
            try:
                grouped = _runs_by_key(tmp_path, "killed")
            except Exception:
                grouped = {}
            if any(r.info.status == "FINISHED" for runs in grouped.values() for r in runs):
                break
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.skip(f"the study finished before the kill point {kill_when} on this machine")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    rerun = subprocess.run(CLI + ["run", str(path), "-q"], capture_output=True, text=True, env=_env(), timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_each_key_finished_once(tmp_path, "killed", 2)
    status = subprocess.run(CLI + ["status", str(path)], capture_output=True, text=True, env=_env(), timeout=300)
    assert "2 runs: 2 finished" in status.stdout


def test_nan_loss_fails_that_run_with_the_reason_and_the_others_finish(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from pydantic import Field

    from disentbench.core.config.load import load_study_config
    from disentbench.core.study.run import run_study
    from disentbench.plugins.models.beta_vae import BetaVAE, BetaVAEConfig

    class ExplodingConfig(BetaVAEConfig):
        explode_at: int = Field(-1, description="Step from which the loss is NaN (-1: never).")

    class Exploding(BetaVAE):
        def loss(self, x, step, generator=None):
            terms = super().loss(x, step, generator)
            if 0 <= self.config.explode_at <= int(step):
                terms["total"] = terms["total"] * float("nan")
            return terms

    monkeypatch.chdir(tmp_path)
    registry = registry_with_model("exploding_vae", ExplodingConfig, Exploding, "test: NaN on demand")
    path = _study(tmp_path, "nan", steps=10, seeds=1)
    raw = yaml.safe_load(path.read_text())
    raw["models"] = [{"name": "exploding_vae", "sweep": {"explode_at": [-1, 3]}, "params": {"num_latent": 4}}]
    result = run_study(load_study_config(raw, registry), registry=registry, progress=False)

    statuses = {o.spec.model_params["explode_at"]: o for o in result.outcomes}
    assert statuses[-1].status == "finished" and "eval/mean/mig/discrete_mig" in statuses[-1].scores
    assert statuses[3].status == "failed" and "non-finite loss at step 5" in statuses[3].error
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    failed = client.get_run(statuses[3].run_id)
    assert failed.info.status == "FAILED" and "non-finite loss" in failed.data.tags["error"]
    assert client.get_run(result.parent_run_id).info.status == "FAILED"


# -- shared stores, complete records ---------------------------------------------------------------------------


def _client(store_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store_dir / 'mlflow.db'}")


def _assert_complete(store_dir: Path, experiment: str, expected: int, *, steps: int, log_every: int,
                     representations=("mean",)) -> dict:  # fmt: skip
    """One active MLflow run per key, FINISHED, trained exactly once (its curve has each logged step once,
    in order), with every score, and whole artifacts (scores.json equal to the scores, a loadable model.pt,
    the images). No study run is left RUNNING. Returns the runs by key."""
    import json

    import torch

    client = _client(store_dir)
    grouped = _runs_by_key(store_dir, experiment)
    assert len(grouped) == expected, {k: [r.info.status for r in v] for k, v in grouped.items()}
    for key, runs in grouped.items():
        assert [r.info.status for r in runs] == ["FINISHED"], (key, [r.info.status for r in runs])
        run = runs[0]
        run_id = run.info.run_id
        curve = [m.step for m in client.get_metric_history(run_id, "train/total")]
        assert curve == list(range(log_every, steps + 1, log_every)), (key, curve)  # no step twice, none missing
        scores = {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
        assert set(scores) == {f"eval/{rep}/mig/discrete_mig" for rep in representations}, (key, sorted(scores))
        folder = Path(client.download_artifacts(run_id, ""))
        assert json.loads((folder / "scores.json").read_text()) == pytest.approx(scores), key
        model = torch.load(folder / "checkpoints" / "model.pt", weights_only=True)
        assert model["state_dict"], key
        images = {p.name for p in (folder / "images").iterdir() if p.stat().st_size > 0}
        assert images == {"reconstructions.png", "traversals.png", "traversals.gif", "score_card.png"}, (key, images)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    studies = client.search_runs([experiment_id], "tags.`disentbench.kind` = 'study'")
    assert "RUNNING" not in [r.info.status for r in studies], [(r.info.run_id, r.info.status) for r in studies]
    return grouped


def _popen(args, cwd: Path, env=None, prefix=CLI):
    return subprocess.Popen(
        prefix + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or _env()
    )


def _wait_for(condition, proc, timeout: float = 300):
    """Poll ``condition`` until true; fail if ``proc`` ends first or it takes over ``timeout`` s."""
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the invocation ended (exit {proc.returncode}) before the point waited for: {err[-2000:]}")
        assert time.time() < deadline, "the invocation never reached the point waited for"
        time.sleep(0.1)


def _shared_study(tmp_path: Path, **options) -> tuple[Path, list[Path], list[Path]]:
    """Folders a and b, each with the same study and its own checkpoints, both tracked in shared/mlflow.db."""
    shared = tmp_path / "shared"
    shared.mkdir()
    folders = [tmp_path / "a", tmp_path / "b"]
    paths = []
    for folder in folders:
        folder.mkdir()
        paths.append(_study(folder, "shared", store=shared / "mlflow.db", **options))
    return shared, folders, paths


RACE_STEPS, RACE_LOG_EVERY = 400, 20


def test_two_folders_on_one_store_train_each_run_exactly_once(tmp_path):
    # Two terminals (or machines) in different folders, so different checkpoint folders, sharing one store:
    # the second starts while the first trains. Before leases lived in MLflow both trained the same run.
    shared, folders, paths = _shared_study(tmp_path, steps=RACE_STEPS, checkpoint_every=50, log_every=RACE_LOG_EVERY)
    first = _popen(["run", str(paths[0])], folders[0])
    _wait_for(lambda: any((folders[0] / "checkpoints").glob("*/checkpoint.pt")), first)
    second = _popen(["run", str(paths[1])], folders[1])
    for proc in (first, second):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    grouped = _assert_complete(shared, "shared", 4, steps=RACE_STEPS, log_every=RACE_LOG_EVERY)
    for key in grouped:  # trained in one folder only: a run trained twice would have a checkpoint in both
        trained_in = [f.name for f in folders if (f / "checkpoints" / key / "checkpoint.pt").exists()]
        assert len(trained_in) == 1, (key, trained_in)


# A stand-in for another machine: the same CLI with another host name, so that its pid means nothing here and
# only its lease's expiry frees its runs (on its own host a dead pid ends a lease at once).
OTHER_HOST = [sys.executable, "-c", (
    "import socket; socket.gethostname = lambda: 'other-machine'\n"
    "from disentbench.core.cli.main import main; main()"
)]  # fmt: skip


@pytest.mark.parametrize("owner_host", ["other-machine", pytest.param("this-machine", marks=pytest.mark.slow)])
def test_a_run_whose_owner_died_in_another_folder_is_taken_over_and_restarted_cleanly(tmp_path, owner_host):
    # The owner is kill -9'd mid-training; the other folder takes the run over once the lease expired (at
    # once for a dead pid on this host). It cannot see the dead owner's checkpoint (another folder), so, as
    # README's Reliability section says, it restarts from step 0 in a fresh MLflow run that replaces the old
    # one (the old one, with the dead attempt's curve, goes to MLflow's trash): one active run per key.
    from mlflow.entities import ViewType

    from disentbench.core.tracking import tracker as tracking

    steps, log_every = 100, 10
    shared, folders, paths = _shared_study(tmp_path, steps=steps, checkpoint_every=20, log_every=log_every)
    env = {**_env(), tracking.LEASE_ENV: "3"}
    first = _popen(["run", str(paths[0])], folders[0], env, OTHER_HOST if owner_host == "other-machine" else CLI)
    checkpoint = folders[0] / "checkpoints"
    _wait_for(lambda: any(checkpoint.glob("*/checkpoint.pt")), first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    (dead_key,) = [p.parent.name for p in checkpoint.glob("*/checkpoint.pt")]

    client = _client(shared)
    (dead,) = _runs_by_key(shared, "shared")[dead_key]
    assert dead.data.tags[tracking.TAG_OWNER_HOST] == (
        owner_host if owner_host == "other-machine" else socket.gethostname()
    )
    deadline = time.time() + 30
    while tracking.live_lease(client.get_run(dead.info.run_id)) is not None:  # at most the 3 s lease
        assert time.time() < deadline, "the dead owner's lease never expired"
        time.sleep(0.2)
    status = subprocess.run(CLI + ["status", str(paths[1])], cwd=folders[1], capture_output=True, text=True, env=env)
    assert "stale (owner lost)" in status.stdout and "4 runs: 3 pending, 1 stale" in status.stdout, status.stdout

    second = subprocess.run(
        CLI + ["run", str(paths[1])], cwd=folders[1], capture_output=True, text=True, env=env, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    grouped = _assert_complete(shared, "shared", 4, steps=steps, log_every=log_every)
    (taken,) = grouped[dead_key]
    assert taken.data.tags.get(tracking.TAG_REPLACES) == dead.info.run_id
    assert "resumed_from_step" not in taken.data.tags  # restarted from 0: the checkpoint is in the other folder
    old = client.get_run(dead.info.run_id)
    assert old.info.lifecycle_stage == "deleted" and old.data.tags[tracking.TAG_REPLACED_BY] == taken.info.run_id
    everything = client.search_runs([old.info.experiment_id], "tags.`disentbench.kind` = 'run'", ViewType.ALL)
    assert sorted(r.data.tags["run_key"] for r in everything if r.info.lifecycle_stage == "active") == sorted(grouped)
    assert (checkpoint / dead_key / "checkpoint.pt").exists()  # the dead owner's checkpoint is left alone


@pytest.mark.slow
def test_an_owner_stalled_past_its_lease_gives_the_run_up_and_records_nothing(tmp_path):
    # Suspended (SIGSTOP) mid-training for longer than its lease, the owner loses the run to the other
    # folder; woken up, it notices at its next heartbeat, stops, and exits 0 with the run skipped.
    from disentbench.core.tracking import tracker as tracking

    shared, folders, paths = _shared_study(tmp_path, steps=RACE_STEPS, checkpoint_every=50, log_every=RACE_LOG_EVERY)
    env = {**_env(), tracking.LEASE_ENV: "3"}
    first = _popen(["run", str(paths[0])], folders[0], env)
    _wait_for(lambda: any((folders[0] / "checkpoints").glob("*/checkpoint.pt")), first)
    first.send_signal(signal.SIGSTOP)
    try:
        (key,) = [p.parent.name for p in (folders[0] / "checkpoints").glob("*/checkpoint.pt")]
        client = _client(shared)
        (stalled,) = _runs_by_key(shared, "shared")[key]
        while tracking.Lease.of(client.get_run(stalled.info.run_id)).heartbeat + 3 >= time.time():
            time.sleep(0.2)  # the lease runs out (the pid is alive: only its expiry frees the run)
        second = subprocess.run(
            CLI + ["run", str(paths[1])], cwd=folders[1], capture_output=True, text=True, env=env, timeout=600
        )
        assert second.returncode == 0, second.stderr[-3000:]
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert "skipped (lost its lease to another owner)" in out, out
    _assert_complete(shared, "shared", 4, steps=RACE_STEPS, log_every=RACE_LOG_EVERY)


# -- fault injection -------------------------------------------------------------------------------------------

# The CLI with one fault: the process dies (os._exit(137), as kill -9 would leave things) at the Nth call of a
# named point. Production code has no hooks: the wrapper patches the functions the points sit in.
FAULT_WRAPPER = '''
import os
import sys
from pathlib import Path

from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient

from disentbench.core.study import recording
from disentbench.core.tracking import tracker as tracking

point, nth = sys.argv[1], int(sys.argv[2])
sys.argv = ["disentbench", *sys.argv[3:]]
count = 0


def die():
    os._exit(137)


def at(owner, name, when, *, after=False, instead=None):
    """Die at the Nth call of owner.name for which when(*args, **kwargs): before it, after it, or in it."""
    original = getattr(owner, name)

    def patched(*args, **kwargs):
        global count
        if when(*args, **kwargs):
            count += 1
            if count == nth:
                if instead is not None:
                    instead(original, *args, **kwargs)
                elif after:
                    original(*args, **kwargs)
                die()
        return original(*args, **kwargs)

    setattr(owner, name, patched)


def claim_tag(key):
    return key.startswith(tracking.TAG_CLAIM_PREFIX)


def torn_write(original, repo, local_file, artifact_path=None):
    """Half the file in place: what a kill mid-copy leaves on a store that does not write atomically."""
    folder = Path(repo.artifact_dir, artifact_path or "")
    folder.mkdir(parents=True, exist_ok=True)
    data = Path(local_file).read_bytes()
    (folder / Path(local_file).name).write_bytes(data[: len(data) // 2])


def artifact_named(name):
    return lambda repo, local_file, artifact_path=None: Path(local_file).name == name


def evaluate_then_die(original, *args, **kwargs):
    """Die inside the evaluation, once its first scorer scored (nothing of it logged yet)."""
    kwargs["on_score"] = lambda *a: die()
    original(*args, **kwargs)


def half_the_scores(original, self, run_id, metrics, step=0):
    original(self, run_id, dict(list(metrics.items())[: len(metrics) // 2]), step)


POINTS = {
    # a new run created, carrying its claim tag and lease, before its params (mid-claim of a new key)
    "run_created": lambda: at(MlflowClient, "create_run",
                              lambda self, *a, tags=None, **k: (tags or {}).get(tracking.TAG_KIND) == "run", after=True),
    # a new run's claim settled, its claim tag not dropped yet
    "new_claim_drop": lambda: at(MlflowClient, "delete_tag", lambda self, run_id, key: claim_tag(key)),
    # a claim tag written on an existing run, before reading the claims back (mid-claim of an unfinished run)
    "claim_written": lambda: at(MlflowClient, "set_tag", lambda self, run_id, key, *a, **k: claim_tag(key), after=True),
    # an existing run's lease written, its claim tag not dropped yet
    "claim_drop": lambda: at(tracking.Tracker, "_drop_claim", lambda *a: True),
    "study_created": lambda: at(tracking.Tracker, "start_study_run", lambda *a, **k: True, after=True),
    "curve_point": lambda: at(tracking.Tracker, "log_metrics",
                              lambda self, run_id, metrics, step=0: any(k.startswith("train/total") for k in metrics),
                              after=True),
    "evaluation": lambda: at(recording, "evaluate", lambda *a, **k: True, instead=evaluate_then_die),
    "scores": lambda: at(tracking.Tracker, "log_metrics",
                         lambda self, run_id, metrics, step=0: any(k.startswith("eval/") for k in metrics),
                         instead=half_the_scores),
    "artifact_scores": lambda: at(LocalArtifactRepository, "log_artifact", artifact_named("scores.json"), instead=torn_write),
    "artifact_image": lambda: at(LocalArtifactRepository, "log_artifact", artifact_named("traversals.gif"), instead=torn_write),
    "artifact_checkpoint": lambda: at(LocalArtifactRepository, "log_artifact", artifact_named("model.pt"), instead=torn_write),
    "finish": lambda: at(tracking.Tracker, "end_run", lambda self, run_id, status=tracking.FINISHED: status == tracking.FINISHED),
}
POINTS[point]()

from disentbench.core.cli.main import main  # noqa: E402

main()
'''

# Each case: the faults of successive invocations as (point, N), then one clean rerun must complete the study.
# Points that only exist on runs that are already there (claim_written, claim_drop) follow a fault that left
# runs behind. The study: 2 runs of 40 steps, a checkpoint every 10, a curve point every 5, mean and sampled.
FAULTS = {
    # right after creating a run: its claim tag and lease written, no params yet
    "mid_claim_new_run": pytest.param([("run_created", 1)], marks=pytest.mark.slow),
    "mid_claim_unfinished_run": [("run_created", 2), ("claim_written", 1), ("claim_drop", 1)],
    "mid_claim_before_drop": pytest.param([("new_claim_drop", 2)], marks=pytest.mark.slow),
    "mid_artifact_scores": [("artifact_scores", 1)],
    "mid_artifact_checkpoint": pytest.param([("artifact_checkpoint", 2)], marks=pytest.mark.slow),
    "mid_artifact_image": pytest.param([("artifact_image", 1)], marks=pytest.mark.slow),
    "study_run_created": pytest.param([("study_created", 1)], marks=pytest.mark.slow),
    # after the curve point at step 25, resumed from the checkpoint at 20: step 25 must not be logged twice
    "mid_training": pytest.param([("curve_point", 5)], marks=pytest.mark.slow),  # killed mid-training: also test_sigkill_then_rerun[checkpoint]
    # packed: the points alternate between the two runs; the 5th is the first run's step 15 (checkpoint at 10)
    "mid_training_packed": pytest.param([("curve_point", 5)], marks=pytest.mark.slow),
    "mid_evaluation": pytest.param([("evaluation", 1)], marks=pytest.mark.slow),
    "mid_scores": pytest.param([("scores", 2)], marks=pytest.mark.slow),
    "before_finish": pytest.param([("finish", 1)], marks=pytest.mark.slow),
}


@pytest.mark.parametrize("faults", list(FAULTS.values()), ids=list(FAULTS))
def test_a_rerun_after_a_kill_at_any_point_leaves_one_finished_run_per_key(tmp_path, request, faults):
    steps, log_every, representations = 40, 5, ("mean", "sampled")
    path = _study(
        tmp_path, "faults", steps=steps, seeds=1, checkpoint_every=10, representations=representations,
        pack_size=2 if request.node.callspec.id.endswith("packed") else 1,
    )  # fmt: skip
    wrapper = tmp_path / "faulty_cli.py"
    wrapper.write_text(FAULT_WRAPPER)
    for point, nth in faults:
        killed = subprocess.run(
            [sys.executable, str(wrapper), point, str(nth), "run", str(path), "-q"],
            capture_output=True, text=True, env=_env(), timeout=600,
        )  # fmt: skip
        assert killed.returncode == 137, f"{point} #{nth} was never reached: {killed.stderr[-2000:]}"
    rerun = subprocess.run(CLI + ["run", str(path), "-q"], capture_output=True, text=True, env=_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_complete(tmp_path, "faults", 2, steps=steps, log_every=log_every, representations=representations)
    from click.testing import CliRunner

    from disentbench.core.cli.main import main

    status = CliRunner().invoke(main, ["status", str(path)], env={"MLFLOW_TRACKING_URI": None})
    assert status.exit_code == 0 and "2 runs: 2 finished" in status.output, status.output
