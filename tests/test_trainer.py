"""The trainer: reproducible, resumable, device-side batches, model-agnostic updates."""

import pytest
import torch
from helpers import Squares, _trainer

from disentbench.core.training.trainer import derive_seed


def _params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_same_seed_same_result_different_seed_differs():
    a, b, c = _trainer(), _trainer(), _trainer(seed=4)
    logs = []
    a.train(on_log=lambda step, terms: logs.append((step, terms)))
    b.train()
    c.train()
    assert torch.equal(_params(a), _params(b))
    assert not torch.equal(_params(a), _params(c))
    assert [step for step, _ in logs] == [4, 8, 12]
    assert set(logs[0][1]) >= {"reconstruction", "kl", "regularizer", "elbo", "total"}
    assert logs[0][1]["total"] == pytest.approx(logs[0][1]["reconstruction"] + logs[0][1]["regularizer"], rel=1e-5)


def test_resume_equals_uninterrupted(tmp_path):
    full = _trainer()
    full.train()

    interrupted = _trainer(tmp_path, steps=12, checkpoint_every=5)

    class Stop(Exception):
        pass

    def stop_after_checkpoint(step):
        if step == 8:  # the checkpoint at step 5 exists; steps 6-8 are lost
            raise Stop

    with pytest.raises(Stop):
        interrupted.train(on_progress=stop_after_checkpoint)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["step"] == 5

    resumed = _trainer(tmp_path, steps=12, checkpoint_every=5)
    result = resumed.train()
    assert result.resumed_from == 5 and result.steps == 7
    assert torch.allclose(_params(resumed), _params(full), atol=1e-6)


def test_device_batches_are_seeded_and_in_range():
    data = Squares()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    b1 = data.sample_batch_on_device(32, g1, "cpu")
    b2 = data.sample_batch_on_device(32, g2, "cpu")
    assert b1.dtype == torch.float32 and b1.shape == (32, 1, 64, 64)
    assert torch.equal(b1, b2)
    assert set(b1.unique().tolist()) <= {0.0, 1.0}
    assert data.device_images("cpu") is data.device_images("cpu")  # copied once


def test_derived_seeds_independent():
    seeds = {derive_seed(s, stream) for s in range(5) for stream in range(4)}
    assert len(seeds) == 20
    assert derive_seed(0, 1) == derive_seed(0, 1)


def test_corrupt_checkpoint_restarts_cleanly(tmp_path):
    full = _trainer()
    full.train()
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        restarted = _trainer(tmp_path)
        result = restarted.train()
    assert result.resumed_from == 0 and result.steps == 12
    assert (tmp_path / "ckpt.corrupt").exists()
    assert torch.equal(_params(restarted), _params(full))


def test_non_finite_loss_stops_the_run():
    from disentbench.core.training.trainer import NonFiniteLoss

    trainer = _trainer()
    original = trainer.model.loss

    def loss(x, step, generator=None):
        terms = original(x, step, generator)
        if step == 5:
            terms["total"] = terms["total"] * float("nan")
        return terms

    trainer.model.loss = loss
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 8: .*total=nan"):
        trainer.train()
