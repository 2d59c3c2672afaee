"""The pictures each run logs: the latent-traversal GIF and the score card."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from disentbench.core.cli.main import main
from disentbench.core.display import images

MIG = "eval/mean/mig/discrete_mig"
MIG_SAMPLED = "eval/sampled/mig/discrete_mig"
FVAE = "eval/mean/factor_vae_score/eval_accuracy"
DOWN = "downstream/mean/downstream_logistic_regression/100:mean_test_accuracy"



# ---------------------------------------------------------------------------
# pictures: traversal GIF and score card


class _FakeData:
    def sample_observations(self, num, random_state):
        return random_state.rand(num, 1, 8, 8).astype(np.float32)


class _FakeModel:
    """Latent i brightens the i-th band of rows: every traversal value gives a different frame."""

    num_latent = 3

    def encode(self, x):
        mean = torch.zeros(x.shape[0], self.num_latent)
        return mean, torch.zeros_like(mean)

    def decode(self, z):
        logits = torch.full((z.shape[0], 1, 8, 8), -1.0)
        for i in range(self.num_latent):
            logits[:, 0, 2 * i : 2 * i + 2, :] += 2 * z[:, i].view(-1, 1, 1)
        return logits


def test_traversal_gif_frames(tmp_path):
    traversals = images.traversal_images(_FakeModel(), _FakeData(), "cpu", steps=5)
    assert traversals.shape == (3, 5, 1, 8, 8)
    grid = images.traversal_grid_from(traversals)
    assert grid.shape == (3 * 10 + 2, 5 * 10 + 2, 3)
    assert np.array_equal(grid, images.traversal_grid(_FakeModel(), _FakeData(), "cpu", steps=5))

    frames = images.traversal_frames(traversals)  # 3 latents -> a 2x2 grid, one cell blank
    assert frames.shape == (5, 2 * 10 + 2, 2 * 10 + 2, 3)
    assert np.all(frames[:, 12:20, 12:20] == 1.0)  # the unused cell stays white

    path = images.save_traversal_gif(traversals, tmp_path / "t.gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.is_animated
        assert gif.n_frames == images.gif_frame_count(5) == 8  # there and back, end frames once
        assert gif.info.get("loop") == 0
        assert gif.size[0] == frames.shape[2] * 2  # scale 2
        first = np.asarray(gif.convert("RGB")).copy()
        gif.seek(4)  # the +limit end
        assert not np.array_equal(first, np.asarray(gif.convert("RGB")))

    plain = images.save_gif(frames, tmp_path / "p.gif", bounce=False, scale=1)
    with Image.open(plain) as gif:
        assert gif.n_frames == 5 and gif.size == (frames.shape[2], frames.shape[1])
    with pytest.raises(ValueError):
        images.save_gif(frames[0], tmp_path / "bad.gif")


class _KLModel(_FakeModel):
    """Latent i has mean i (for every x) and variance 1: its KL is i**2 / 2."""

    def encode(self, x):
        mean = torch.arange(self.num_latent, dtype=torch.float32).repeat(x.shape[0], 1)
        return mean, torch.zeros_like(mean)


def test_traversal_labels_come_from_each_latents_kl(tmp_path):
    kl = images.latent_kl(_KLModel(), _FakeData(), "cpu", num=10, batch_size=4)  # three batches, averaged
    assert kl == pytest.approx([0.0, 0.5, 2.0])
    assert images.latent_labels(kl) == ["z0 KL 0.00", "z1 KL 0.50", "z2 KL 2.00"]
    assert images.latent_labels([0.123, 7.0]) == ["z0 KL 0.12", "z1 KL 7.00"]
    assert images.value_labels(5) == ["-2.0", "-1.0", "+0.0", "+1.0", "+2.0"]

    traversals = images.traversal_images(_FakeModel(), _FakeData(), "cpu", steps=5)
    plain = images.traversal_grid_from(traversals)
    labelled = images.labelled_traversal_grid(traversals, kl)
    grown_h, grown_w = labelled.shape[0] - plain.shape[0], labelled.shape[1] - plain.shape[1]
    assert 8 <= grown_h <= 30 and grown_w >= 30  # a strip of values on top, a margin of latent labels on the left
    assert np.allclose(labelled[grown_h:, grown_w:], plain, atol=1 / 255)  # the grid itself, moved, not changed
    assert (labelled[:grown_h, grown_w:] < 0.5).any() and (labelled[grown_h:, :grown_w] < 0.5).any()  # text drawn
    wider = images.labelled_traversal_grid(traversals, [0.0, 0.5, 123.456])  # a longer label: a wider margin
    assert wider.shape[1] > labelled.shape[1]
    with pytest.raises(ValueError):
        images.labelled_traversal_grid(traversals, [0.1])

    frames = images.traversal_frames(traversals)
    framed = images.traversal_frames(traversals, kl=kl)  # a label strip above each row of cells
    assert framed.shape[0] == 5 and framed.shape[2] == frames.shape[2] and framed.shape[1] > frames.shape[1]
    path = images.save_traversal_gif(traversals, tmp_path / "kl.gif", kl=kl)
    with Image.open(path) as gif:
        assert gif.size[1] > 2 * frames.shape[1]


def test_headline_scores_and_score_card(tmp_path):
    scores = {MIG: 0.3, MIG_SAMPLED: 0.2, "eval/mean/mig/continuous_mig": 0.1, FVAE: 0.8,
              "eval/mean/factor_vae_score/train_accuracy": 0.9, DOWN: 0.7, "train/elbo": -3.0,
              "eval/mean/sap/SAP_score": float("nan")}
    headlines = {"mig": ("discrete_mig",), "factor_vae_score": ("eval_accuracy",),
                 "downstream_logistic_regression": ("100:mean_test_accuracy",)}
    table = images.headline_scores(scores, headlines)
    assert list(table) == ["mean", "sampled"]
    assert list(table["mean"]) == ["factor_vae_score", "mig", "sap", "downstream_logistic_regression"]
    assert table["sampled"] == {"mig": 0.2}

    figure = images.score_card("beta_vae beta=4 dsprites s=3", {"beta": 4.0, "steps": 10}, scores, headlines,
                               subtitle="model beta_vae · dataset dsprites · seed 3")
    assert "pyplot" not in type(figure.canvas).__module__
    path = images.save_figure(figure, tmp_path / "card.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] == 800 and png.size[1] > 200
    empty = images.save_figure(images.score_card("x", {}, {}), tmp_path / "empty.png")
    assert Image.open(empty).format == "PNG"


def test_each_run_logs_gif_and_score_card(tmp_path, monkeypatch):
    """A one-run, few-step study: the artifacts a researcher opens in the UI, and global -q."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({
        "name": "one", "datasets": ["dsprites_procedural"], "models": [{"name": "beta_vae", "params": {"beta": 4}}],
        "training": {"steps": 2, "batch_size": 8, "device": "cpu", "log_every": 1},
        "evaluation": {"metrics": [{"name": "mig", "params": {"num_train": 50}}]},
    }))
    result = CliRunner().invoke(main, ["-q", "run", "one.yaml"])
    assert result.exit_code == 0, result.output
    assert "start [1/1]" not in result.output  # the global --quiet reached run's own -q

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("one")
    run = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("disentbench.kind") == "run")
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert {"images/traversals.gif", "images/score_card.png", "images/traversals.png"} <= listed
    gif = client.download_artifacts(run.info.run_id, "images/traversals.gif", str(tmp_path))
    with Image.open(gif) as image:
        assert image.format == "GIF" and 1 <= image.n_frames <= images.gif_frame_count(images.TRAVERSAL_STEPS)
    grid = client.download_artifacts(run.info.run_id, "images/traversals.png", str(tmp_path))
    plain = images.TRAVERSAL_STEPS * (64 + 2) + 2
    assert Image.open(grid).size[0] > plain  # the latent/KL margin beside the 64x64 cells
    card = client.download_artifacts(run.info.run_id, "images/score_card.png", str(tmp_path))
    assert Image.open(card).format == "PNG"
