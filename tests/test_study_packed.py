"""Packed training inside a study (training.pack_size): same runs, same records, same results as alone.

The studies here are tiny (beta-VAE with 4 latents, 20 steps of batch 8 on the
procedural dSprites). Packed and solo runs differ by summation-order rounding
only; with the study's Adam eps = 1e-8, Adam amplifies such rounding by
lr / eps (see core/training/packed/trainer.py), so the runs compared here use adam_eps = 1e-3,
where a parameter difference measures the computation and not Adam's
conditioning.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import poisoned_vae_registry, registry_with_model

from disentbench.core.cli.main import main
from disentbench.core.config.load import load_study_config
from disentbench.core.study.jobs import RunJob, group_into_packs, pack_key
from disentbench.core.study.run import run_study


def _raw(tmp_path: Path, name: str, pack_size, *, model="beta_vae", sweep=None, seeds=(0, 1)) -> dict:
    return {
        "name": name,
        "datasets": ["dsprites_procedural"],
        "models": [
            {"name": model, "sweep": sweep or {"beta": [1, 4]}, "params": {"num_latent": 4, "adam_eps": 1e-3}}
        ],
        "seeds": list(seeds),
        "training": {
            "steps": 20,
            "batch_size": 8,
            "log_every": 5,
            "checkpoint_every": 10,
            "device": "cpu",
            "pack_size": pack_size,
            "checkpoint_dir": str(tmp_path / f"checkpoints_{name}"),
        },
        "evaluation": {"metrics": [{"name": "mig", "params": {"num_train": 100}}]},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }


def _children(client, experiment: str) -> dict[str, object]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`disentbench.kind` = 'run'")
    return {(r.data.params["model.beta"], r.data.tags["seed"]): r for r in runs}


def _state_dict(client, run_id: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    path = client.download_artifacts(run_id, "checkpoints/model.pt", str(tmp_path / run_id))
    return torch.load(path, weights_only=True)["state_dict"]


def test_packed_study_matches_solo_study_and_reruns_skip(tmp_path, monkeypatch, registry):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    # 2 betas x 2 seeds in packs of at most 3: one pack of three runs, and the fourth alone
    packed = run_study(load_study_config(_raw(tmp_path, "packed", 3), registry), registry=registry, progress=False)
    solo = run_study(load_study_config(_raw(tmp_path, "solo", 1), registry), registry=registry, progress=False)
    assert [o.status for o in packed.outcomes] == ["finished"] * 4
    assert [o.status for o in solo.outcomes] == ["finished"] * 4

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    packed_runs, solo_runs = _children(client, "packed"), _children(client, "solo")
    assert set(packed_runs) == set(solo_runs) == {("1.0", "0"), ("1.0", "1"), ("4.0", "0"), ("4.0", "1")}
    # grid order: beta=1 s=0, beta=1 s=1, beta=4 s=0 share the pack; beta=4 s=1 trains alone
    assert {k: r.data.tags.get("pack_size") for k, r in packed_runs.items()} == {
        ("1.0", "0"): "3", ("1.0", "1"): "3", ("4.0", "0"): "3", ("4.0", "1"): None
    }  # fmt: skip
    assert not any("pack_size" in r.data.tags for r in solo_runs.values())

    for key, run in packed_runs.items():
        other = solo_runs[key]
        assert run.info.status == "FINISHED"
        assert {"config.yaml", "scores.json", "images", "checkpoints"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
        for metric in ("eval/mean/mig/discrete_mig", "train/seconds", "train/model_steps_per_second"):
            assert metric in run.data.metrics, (key, sorted(run.data.metrics))
        # the same training curve, to rounding
        for term in ("total", "reconstruction", "kl"):
            curve = client.get_metric_history(run.info.run_id, f"train/{term}")
            reference = client.get_metric_history(other.info.run_id, f"train/{term}")
            assert [m.step for m in curve] == [m.step for m in reference] == [5, 10, 15, 20]
            assert [m.value for m in curve] == pytest.approx([m.value for m in reference], rel=1e-5, abs=1e-5)
        # the same trained parameters, to rounding
        mine, theirs = _state_dict(client, run.info.run_id, tmp_path), _state_dict(client, other.info.run_id, tmp_path)
        assert mine.keys() == theirs.keys()
        worst = max((mine[n].double() - theirs[n].double()).abs().max().item() for n in mine)
        assert worst < 1e-4, (key, worst)
        assert run.data.metrics["eval/mean/mig/discrete_mig"] == pytest.approx(
            other.data.metrics["eval/mean/mig/discrete_mig"], abs=1e-3
        )

    # Re-running the packed study trains nothing and creates no run.
    again = run_study(load_study_config(_raw(tmp_path, "packed", 3), registry), registry=registry, progress=False)
    assert [o.status for o in again.outcomes] == ["skipped"] * 4
    assert {o.run_id for o in again.outcomes} == {r.info.run_id for r in packed_runs.values()}
    assert len(_children(client, "packed")) == 4


def test_nan_run_fails_alone_inside_its_pack(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    registry = poisoned_vae_registry()
    raw = _raw(tmp_path, "nan", 4, model="poisoned_vae", sweep={"poison": [0.0, 1.0]})
    result = run_study(load_study_config(raw, registry), registry=registry, progress=False)

    by_poison = {}
    for outcome in result.outcomes:
        by_poison.setdefault(outcome.spec.model_params["poison"], []).append(outcome)
    assert [o.status for o in by_poison[0.0]] == ["finished", "finished"]
    assert all("eval/mean/mig/discrete_mig" in o.scores for o in by_poison[0.0])
    assert [o.status for o in by_poison[1.0]] == ["failed", "failed"]
    assert all("non-finite loss at step 5" in o.error for o in by_poison[1.0])

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for outcome in by_poison[1.0]:
        run = client.get_run(outcome.run_id)
        assert run.info.status == "FAILED" and run.data.tags["error"].startswith("NonFiniteLoss: non-finite loss")
        assert "error.txt" in {a.path for a in client.list_artifacts(outcome.run_id)}
    for outcome in by_poison[0.0]:
        run = client.get_run(outcome.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["pack_size"] == "4"
        assert [m.step for m in client.get_metric_history(outcome.run_id, "train/total")] == [5, 10, 15, 20]
    assert client.get_run(result.parent_run_id).info.status == "FAILED"


def test_unpackable_runs_are_trained_one_by_one(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from disentbench.plugins.models.beta_vae import BetaVAE, BetaVAEConfig

    class GlobalDraw(BetaVAE):
        """Draws from the global RNG in its loss: it cannot be packed (UnpackableModel)."""

        def loss(self, x, step, generator=None):
            terms = super().loss(x, step, generator)
            terms["total"] = terms["total"] + 0.0 * torch.rand(()).to(terms["total"])
            return terms

    monkeypatch.chdir(tmp_path)
    registry = registry_with_model("global_draw_vae", BetaVAEConfig, GlobalDraw, "test: unpackable")
    raw = _raw(tmp_path, "unpackable", 2, model="global_draw_vae", sweep={"beta": [1.0]})
    raw["training"].update(steps=5)
    raw["evaluation"] = {"metrics": []}
    result = run_study(load_study_config(raw, registry), registry=registry, progress=False)
    assert [o.status for o in result.outcomes] == ["finished", "finished"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for outcome in result.outcomes:
        run = client.get_run(outcome.run_id)
        assert run.info.status == "FINISHED" and "pack_size" not in run.data.tags
        assert [m.step for m in client.get_metric_history(outcome.run_id, "train/total")] == [5]


def test_a_pack_that_cannot_be_built_fails_its_runs_alone_and_the_study_goes_on(tmp_path, monkeypatch):
    """A loss that raises while the pack is built (its dry run) must not abort the study or leave runs RUNNING."""
    from mlflow.tracking import MlflowClient

    from disentbench.plugins.models.beta_vae import BetaVAE, BetaVAEConfig

    class Broken(BetaVAE):
        def loss(self, x, step, generator=None):
            raise RuntimeError("loss cannot handle this input")

    monkeypatch.chdir(tmp_path)
    registry = registry_with_model("broken_vae", BetaVAEConfig, Broken, "test: loss raises")
    raw = _raw(tmp_path, "broken", 2, model="broken_vae")
    raw["models"].append({"name": "beta_vae", "sweep": {"beta": [1.0]}, "params": {"num_latent": 4}})
    raw["training"].update(steps=4)
    raw["evaluation"] = {"metrics": []}
    result = run_study(load_study_config(raw, registry), registry=registry, progress=False)
    by_model = {}
    for outcome in result.outcomes:
        by_model.setdefault(outcome.spec.model, []).append(outcome)
    assert [o.status for o in by_model["broken_vae"]] == ["failed"] * 4
    assert all("loss cannot handle this input" in o.error for o in by_model["broken_vae"])
    assert [o.status for o in by_model["beta_vae"]] == ["finished", "finished"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("broken")
    assert {r.info.status for r in client.search_runs([exp.experiment_id])} == {"FAILED", "FINISHED"}


def _job(index: int, **changes) -> RunJob:
    from disentbench.core.config.grid import RunSpec

    params = {"beta": 1.0, "num_latent": 4, **changes.pop("params", {})}
    spec = RunSpec(
        study="s", index=index, dataset="d", dataset_params={}, model=changes.pop("model", "m"),
        model_params=params, swept={"beta": params["beta"], **changes.pop("swept", {})}, seed=changes.pop("seed", 0),
        steps=changes.pop("steps", 10), batch_size=8, run_key=str(index),
    )  # fmt: skip
    return RunJob(spec, "parent", None, index + 1, 0)


def test_group_into_packs_keeps_order_and_groups_only_what_may_share_a_pack():
    jobs = [
        _job(0, params={"beta": 1.0}),
        _job(1, params={"beta": 4.0}),
        _job(2, model="other"),
        _job(3, params={"beta": 16.0}, seed=1),
        _job(4, steps=20),
        _job(5, params={"beta": 2.0}),
    ]
    packs = group_into_packs(jobs, 3)
    assert [[j.spec.index for j in pack] for pack in packs] == [[0, 1, 3], [2], [4], [5]]
    assert [[j.spec.index for j in pack] for pack in group_into_packs(jobs, 1)] == [[i] for i in range(6)]
    per_job = group_into_packs(jobs, lambda job: 1 if job.spec.index == 1 else 8)
    assert [[j.spec.index for j in pack] for pack in per_job] == [[0, 3, 5], [1], [2], [4]]
    # a swept number is per run; a fixed or non-numeric value is part of what a pack shares
    assert pack_key(_job(0).spec) == pack_key(_job(1, params={"beta": 9.0}).spec)
    assert pack_key(_job(0).spec) != pack_key(_job(1, params={"num_latent": 5}).spec)


BAD_PACK_SIZES = [(0, "at least 1 run"), ("big", "use auto or a whole number")]


@pytest.mark.parametrize("value,words", BAD_PACK_SIZES)
def test_bad_pack_size_exits_2_naming_the_field(tmp_path, monkeypatch, value, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = copy.deepcopy(_raw(tmp_path, "bad", value))
    del raw["tracking"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["run", "bad.yaml"])
    assert result.exit_code == 2, result.output
    assert "error: training.pack_size:" in result.output and words in result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_formulation_is_validated_and_reaches_the_packed_trainer(tmp_path, monkeypatch, registry):
    from disentbench.core.study.packing import speed_options as _speed_options
    from disentbench.core.training.packed.trainer import FORMULATIONS

    monkeypatch.chdir(tmp_path)
    raw = _raw(tmp_path, "bad", 2)
    raw["training"]["formulation"] = "cudnn"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["run", "bad.yaml"])
    assert result.exit_code == 2, result.output
    assert "error: training.formulation:" in result.output and "'grouped'" in result.output
    assert not (tmp_path / "mlflow.db").exists()
    # the config accepts exactly the trainer's formulations, and passes them on
    from typing import get_args

    from disentbench.core.config.schema import TrainingConfig

    assert set(get_args(TrainingConfig.model_fields["formulation"].annotation)) == set(FORMULATIONS)
    for formulation in FORMULATIONS:
        raw["training"].update(formulation=formulation, compile=True)
        speed = _speed_options(load_study_config(raw, registry))
        assert speed.formulation == formulation and speed.compile
    raw["training"]["formulation"] = "nothing"
    with pytest.raises(Exception, match="training.formulation"):
        load_study_config(raw, registry)


def test_pack_size_defaults_to_auto_and_packs_nothing_off_cuda(registry):
    from disentbench.core.study.worker import Worker

    config = load_study_config({"name": "t", "datasets": ["dsprites_procedural"], "models": ["beta_vae"]}, registry)
    assert config.training.pack_size == "auto" and config.training.bf16 is False and config.training.cuda_graphs
    worker = Worker(config, "sqlite:///unused.db", "0", "cpu", progress=False)
    assert not worker.may_pack()
    assert worker.may_pack(["cuda:0"]) == torch.cuda.is_available()
    config.training.pack_size = 2
    assert Worker(config, "sqlite:///unused.db", "0", "cpu", progress=False).may_pack()


def test_auto_pack_size_is_probed_once_per_pack_group_and_budgets_the_datasets_images(tmp_path, monkeypatch, registry):
    """Swept values share one memory probe; the dataset's images (not yet on the device) are reserved."""
    from disentbench.core.config.grid import expand_grid
    from disentbench.core.study.worker import Worker
    from disentbench.core.training.packed import trainer as packed

    raw = _raw(tmp_path, "probe", "auto", sweep={"beta": [1, 2, 4, 8]}, seeds=(0, 1, 2))
    config = load_study_config(raw, registry)
    worker = Worker(config, raw["tracking"]["uri"], "0", "cpu", progress=False)
    ctx = worker._context(registry=registry)
    ctx.device = torch.device("cuda")  # only its type is read before the (stubbed) probe
    probes = []

    def probe(factory, device, batch_size, **kwargs):
        probes.append(kwargs["reserved_bytes"])
        return 5

    monkeypatch.setattr(packed, "choose_pack_size", probe)
    jobs = [RunJob(s, "parent", None, i + 1, 12) for i, s in enumerate(expand_grid(config, registry))]
    packs = group_into_packs(jobs, worker.pack_size_for, key=worker.pack_key)
    assert [len(p) for p in packs] == [5, 5, 2]
    data = ctx.datasets.get("dsprites_procedural", {})
    assert probes == [data.images.nbytes]


def test_training_one_dataset_frees_the_device_copy_of_the_others(registry):
    """A study goes dataset by dataset: only the dataset being trained keeps its images on the device."""
    from helpers import Squares

    from disentbench.core.config.grid import canonical_json
    from disentbench.core.study.context import DatasetCache as _DatasetCache

    cache = _DatasetCache(registry)
    first, second = Squares(), Squares()
    cache._cache[canonical_json(["a", {}])] = first
    cache._cache[canonical_json(["b", {}])] = second
    first.device_images("cpu")
    assert cache.for_training("a", {}) is first
    assert first.holds_device_images("cpu")  # its own copy stays
    second.device_images("cpu")
    assert cache.for_training("b", {}) is second
    assert not first.holds_device_images("cpu") and second.holds_device_images("cpu")
