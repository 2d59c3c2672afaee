"""The trainer: one model, one dataset, batches made on the device, no per-step host sync.

The dataset's uint8 images are copied to the device once; every batch is an
index draw from a seeded ``torch.Generator`` on that device followed by the
dataset's ``to_float``. Loss terms are summed on the device and brought to the
host only every ``log_every`` steps. Checkpoints hold the model, every
optimizer, both generators and the step, so an interrupted run resumes where
it stopped and gives the same result as an uninterrupted one.

The trainer knows nothing about particular models: it asks the model for its
``(optimizer, loss_term)`` pairs and minimises each term over that optimizer's
parameters only (FactorVAE's VAE and discriminator updates come from one
forward pass this way).
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from disentbench.core.contracts import Model
from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.messages import first_line

# Streams derived from a run's seed; fixed numbers so runs are reproducible.
STREAM_INIT, STREAM_DATA, STREAM_LATENT, STREAM_EVAL = 0, 1, 2, 3


def derive_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed for one random stream of a run."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


class DeviceUnavailable(ValueError, RuntimeError):
    """A requested device this machine does not have (bad input: the CLI exits 2).

    Also a ``RuntimeError``, as this error was before, for callers that catch that.
    """


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise DeviceUnavailable(
                f"device {device!r} requested but this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1}); use one of those, cuda or auto"
            )
    elif resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceUnavailable(f"device {device!r} requested but MPS (Apple GPU) is not available; use --device cpu or auto")
    return resolved


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def build_model(factory: Callable, config, observation_shape, seed: int, device: torch.device) -> Model:
    """Construct a model with its initialisation drawn from the run's own init stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, STREAM_INIT))
        model = factory(config, tuple(observation_shape))
    return model.to(device)


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite; the run cannot continue."""

    def __init__(self, step: int, terms: dict[str, float]):
        bad = ", ".join(f"{k}={v}" for k, v in terms.items() if not math.isfinite(v))
        super().__init__(f"non-finite loss at step {step}: {bad}; lower the learning rate or check the data")
        self.step = step


class CorruptCheckpoint(RuntimeError):
    pass


@dataclass
class TrainResult:
    steps: int  # optimizer steps taken in this call (after any resume)
    seconds: float  # wall-clock seconds of this call
    final_terms: dict[str, float]
    resumed_from: int = 0
    #: training seconds over every segment of the run (earlier segments read from the checkpoint); None when
    #: the checkpoint resumed from predates that record, so only this segment is known
    total_seconds: float | None = None

    @property
    def cumulative(self) -> tuple[int, float]:
        """(steps, seconds) of the whole run when known, else of this segment."""
        if self.total_seconds is None:
            return self.steps, self.seconds
        return self.steps + self.resumed_from, self.total_seconds


LogFn = Callable[[int, dict[str, float]], None]
ProgressFn = Callable[[int], None]


class Trainer:
    def __init__(
        self,
        model: Model,
        data: GroundTruthData,
        *,
        seed: int,
        steps: int,
        batch_size: int,
        device: torch.device,
        log_every: int = 100,
        checkpoint_every: int = 10_000,
        checkpoint_path: Path | str | None = None,
        channels_last: bool = True,
    ):
        # NHWC memory layout: ~1.5x faster conv backward on CPU (oneDNN) and
        # the preferred layout of cuDNN's tensor-core kernels.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # torch's stubs omit memory_format
        self.data = data
        self.steps = steps
        self.batch_size = batch_size
        self.device = device
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.optimizers = model.optimizers()
        self.data_generator = make_generator(device, derive_seed(seed, STREAM_DATA))
        self.latent_generator = make_generator(device, derive_seed(seed, STREAM_LATENT))
        self.step = 0
        # Training seconds before this segment (from the checkpoint; None: an old checkpoint without them),
        # and when this segment's clock started (None: not training yet).
        self.seconds_before: float | None = 0.0
        self.clock_start: float | None = None
        self.resumed_from: int | None = None  # set by maybe_resume (train() resumes only once)
        self._initial = copy.deepcopy(self.state_dict()) if self.checkpoint_path else None

    # -- checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt, _ in self.optimizers],
            "data_generator": self.data_generator.get_state(),
            "latent_generator": self.latent_generator.get_state(),
            "train_seconds": self.elapsed_seconds(),
        }

    def elapsed_seconds(self) -> float:
        """Training seconds of the run so far, every segment included (-1.0 if earlier ones are unknown)."""
        if self.seconds_before is None:
            return -1.0
        return self.seconds_before + (time.perf_counter() - self.clock_start if self.clock_start is not None else 0.0)

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for (opt, _), opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.data_generator.set_state(state["data_generator"])
        self.latent_generator.set_state(state["latent_generator"])
        self.step = int(state["step"])
        seconds = float(state.get("train_seconds", -1.0))
        self.seconds_before = seconds if seconds >= 0 else None

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is None:
            return
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, self.checkpoint_path)  # atomic: a crash never leaves half a checkpoint

    def maybe_resume(self) -> int:
        """Resume from the checkpoint if there is one; a corrupt one is set aside and training restarts.

        Returns the step resumed from (0: from scratch), also kept as :attr:`resumed_from`;
        :meth:`train` calls it unless it was called before.
        """
        self.resumed_from = self._resume()
        return self.resumed_from

    def _resume(self) -> int:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return 0
        try:
            # weights_only: a checkpoint is data, never code to run
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
            if not isinstance(state, dict) or not {"step", "model", "optimizers"} <= set(state):
                raise CorruptCheckpoint("missing keys")
            self.load_state_dict(state)
        except Exception as exc:
            bad = self.checkpoint_path.with_suffix(".corrupt")
            os.replace(self.checkpoint_path, bad)
            # one line: torch's messages run to a dozen lines of weights_only advice; skip it, keep what was wrong
            reason = first_line(str(exc).split("WeightsUnpickler error:", 1)[-1])
            warnings.warn(
                f"checkpoint {self.checkpoint_path} is unreadable ({type(exc).__name__}"
                f"{': ' + reason if reason else ''}); moved to {bad.name}, training restarts from step 0",
                stacklevel=2,
            )
            self._reset()
            return 0
        return self.step

    def _reset(self) -> None:
        """Back to the freshly built state (after a failed partial load)."""
        if self._initial is None:
            raise RuntimeError("no initial state to reset to (the trainer has no checkpoint path)")
        self.model.load_state_dict(self._initial["model"])
        for (opt, _), opt_state in zip(self.optimizers, self._initial["optimizers"]):
            opt.load_state_dict(opt_state)
        self.data_generator.set_state(self._initial["data_generator"])
        self.latent_generator.set_state(self._initial["latent_generator"])
        self.step = 0
        self.seconds_before = 0.0

    # -- the loop -----------------------------------------------------------------
    def _update(self, terms: dict[str, torch.Tensor]) -> None:
        for opt, _ in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if len(self.optimizers) == 1:
            terms[self.optimizers[0][1]].backward()
        else:
            # Each optimizer minimises its own term over its own parameters only;
            # gradients are taken before any parameter moves (simultaneous update).
            grads = []
            for i, (opt, term) in enumerate(self.optimizers):
                params = [p for group in opt.param_groups for p in group["params"]]
                last = i == len(self.optimizers) - 1
                grads.append(torch.autograd.grad(terms[term], params, retain_graph=not last, allow_unused=True))
            for (opt, _), opt_grads in zip(self.optimizers, grads):
                params = [p for group in opt.param_groups for p in group["params"]]
                for p, g in zip(params, opt_grads):
                    p.grad = g
        for opt, _ in self.optimizers:
            opt.step()

    def train(self, on_log: LogFn | None = None, on_progress: ProgressFn | None = None) -> TrainResult:
        resumed_from = self.maybe_resume() if self.resumed_from is None else self.resumed_from
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        last: dict[str, float] = {}
        start = self.clock_start = time.perf_counter()
        while self.step < self.steps:
            x = self.data.sample_batch_on_device(self.batch_size, self.data_generator, self.device)
            x = x.contiguous(memory_format=self.memory_format)
            terms = self.model.loss(x, self.step, self.latent_generator)
            self._update(terms)
            for name, value in terms.items():
                value = value.detach()
                sums[name] = sums[name] + value if name in sums else value.clone()
            count += 1
            self.step += 1
            if self.step % self.log_every == 0 or self.step == self.steps:
                # the only host sync: once per logging interval
                last = {name: float(v) for name, v in zip(sums, torch.stack(list(sums.values())).div(count).tolist())}
                if not all(math.isfinite(v) for v in last.values()):
                    raise NonFiniteLoss(self.step, last)
                if on_log:
                    on_log(self.step, last)
                sums, count = {}, 0
                if on_progress:
                    on_progress(self.step)
            if self.step % self.checkpoint_every == 0 and self.step < self.steps:
                self.save_checkpoint()
        self.save_checkpoint()
        self.model.eval()
        total = self.elapsed_seconds()
        return TrainResult(
            self.step - resumed_from, time.perf_counter() - start, last, resumed_from, total if total >= 0 else None
        )
