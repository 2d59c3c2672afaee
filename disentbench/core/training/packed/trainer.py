"""Packed training: many runs of one model class trained as one batched computation.

The study's VAEs are far too small to fill a GPU one at a time. A
:class:`PackedTrainer` takes P runs that share dataset, model class,
architecture and batch size, stacks their parameters along a new leading
"model" dimension and trains them together, each with its own

* parameters and Adam state (:class:`StackedAdam`, one slice per model),
* data stream and latent-noise stream: every run keeps the two
  ``torch.Generator`` objects of its own :class:`~disentbench.core.training.trainer.Trainer`
  and draws exactly what it would draw alone,
* hyperparameter values (a vector of betas, gammas, capacities...) and
  step-dependent schedule (AnnealedVAE's capacity sees each run's own step),
* log lines, checkpoints (``Trainer.state_dict`` format, written by the run's
  own Trainer), and failure: a NaN stops that run only.

How the batched computation is built, and why
--------------------------------------------
``torch.func.vmap`` over ``torch.func.functional_call`` of the model's *own*
``loss`` method, with the stacked parameters as the mapped argument. vmap
turns every conv into one grouped convolution (groups = P), every dense layer
into one batched matmul and every loss reduction into a batched reduction;
autograd then differentiates the batched ops directly. This was chosen over
hand-written grouped convolutions because

* it is faithful by construction: the packed loss *is* each model's loss code
  (including FactorVAE's discriminator, DIP-VAE's covariance penalty,
  beta-TCVAE's B x B x d estimator), not a re-implementation that could drift;
* it is generic: a new model plugin packs without any packing-specific code,
  as long as its loss is vmappable (no Python control flow on tensor values or
  on hyperparameters that differ inside the pack) and draws its randomness from
  the generator it is given with out-of-place factories (``torch.randn``,
  ``torch.rand``, ``torch.randint``, ``*_like``);
* the remaining per-op Python overhead disappears under CUDA graphs.

On CUDA, cuDNN runs vmap's grouped convolutions (above all their backward)
as one kernel per group, so for the study's own conv architecture the
*batched* formulations compute the encoder and decoder of all runs at once
and vmap only the rest of the loss (sampling, reconstruction, KL,
regulariser, discriminator): ``"bmm"`` as batched GEMMs
(:mod:`disentbench.core.training.packed.bmm`), ``"grouped"`` as grouped convolutions
in one NHWC layout (:mod:`disentbench.core.training.packed.grouped`, the CPU default)
and ``"triton"`` as fused Triton kernels (:mod:`disentbench.core.training.kernels.triton_conv`,
with a fused Adam; the CUDA default). Measured on an H200
(benchmarks/README.md): 8,625 model-steps/s for 512 beta-VAEs in bf16 with
triton, 49.5x the one-model loop in the same run (4,339 for 128 in
fp32/TF32); bmm 2,847 and grouped 2,055 in bf16.

Per-run hyperparameters. Config fields whose values differ inside a pack must
be numbers; inside the vmapped call the model sees a copy of its config whose
differing fields are 0-d tensors (one value per run, batched by vmap), so
``self.config.beta * kl`` computes each run's own ``beta * kl``. Fields that
agree stay Python numbers, exactly as in a solo run. The step is passed as a
tensor (one entry per run), which AnnealedVAE's ``capacity`` supports.

Randomness. Random tensors are drawn *outside* the batched computation, per
run, with the run's own generators, in the run's own order: the batch via
``data.sample_batch_on_device(batch, data_generator, device)`` exactly as the
Trainer does, and the latent draws of ``loss`` by replaying the random calls
``loss`` makes (recorded once by a ``TorchFunctionMode`` on a dry run); inside
the vmapped ``loss`` a second mode hands each such call its pre-drawn, stacked
tensor. So a run sees the same batches and the same noise packed or alone,
and a run's result never depends on which other runs share its pack. Drawing
outside also keeps the compute free of RNG state, so it can be captured in a
CUDA graph and replayed with no generator bookkeeping.

Optimizer. :class:`StackedAdam` applies torch.optim.Adam's update
(``_single_tensor_adam``/``_multi_tensor_adam``, non-capturable path) with the
same elementwise operations in the same order, but with per-run learning
rate, betas, eps and step count as tensors broadcast over the model
dimension; bias corrections are computed in float64 like torch's Python
scalars and rounded to the parameter dtype where torch rounds them. Each of a
model's ``(optimizer, term)`` pairs becomes one StackedAdam fed with the
gradient of the pack's summed ``term`` with respect to that optimizer's
stacked parameters only (the runs are independent, so this is each run's own
gradient): FactorVAE's VAE and discriminator updates stay simultaneous and
each term reaches only its own parameters.

Exactness. On CPU the packed loss terms and gradients differ from the solo
ones by summation-order rounding only (a vmapped or grouped convolution is not
the same kernel as a single one; the worst case is the last deconv's bias
gradient, a sum over batch x 4096 pixels, ~3e-5 relative). A hyperparameter
that differs inside the pack enters as a per-run tensor in the parameters'
dtype, where a solo run (or a pack whose runs share the value) computes with
the Python float: values float32 cannot hold (beta 1.1) round ~1 ulp
differently; the study's grid values are all exact.
Adam at the study's eps = 1e-8 turns a gradient g near eps into a step of
lr * g / (|g| + eps), amplifying rounding in such gradients by lr / eps = 1e4,
so in fp32 *any* two computations with different summation orders drift apart
by up to ~lr per step in a few parameters (on the tests' toy data the solo
Trainer with channels-last on vs off: 1e-4 after three steps). Measured
(tests/test_packed.py, all six models): float64 with the study's Adam, packed
equals solo to ~1e-14 after three steps; fp32 with adam_eps = 1e-3 (where a
parameter difference measures the computation, not Adam's conditioning), to
~1e-7 after four (the tests require <= 1e-10 and <= 1e-5). On CUDA cuDNN picks
other algorithms for grouped than for single convolutions, so equality there
is to rounding as well; TF32 (PyTorch enables it for cuDNN convolutions by
default) applies to packed and solo runs alike. ``channels_last`` and
``cuda_graphs`` change layouts and launch mechanics only; ``autocast_bf16``
is not exact.

What a pack requires: one model class, the same parameter names and shapes,
one dataset and batch size, configs that differ in numeric fields only, and
plain Adam optimizers (no weight decay, amsgrad or maximize); anything else
raises :class:`UnpackableModel` when the trainer is built.

Failures. Non-finite loss terms are detected where the Trainer detects them,
at each run's logging steps (the only host syncs). A failed run gets a
:class:`~disentbench.core.training.trainer.NonFiniteLoss` in the result, is removed
from the pack (the stacked tensors are compacted, so it costs nothing
further) and its checkpoint is not overwritten; the others continue
unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from disentbench.core.contracts import Model
from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.nets import losses
from disentbench.core.training.trainer import NonFiniteLoss, Trainer, TrainResult

#: Pack size :func:`choose_pack_size` returns off CUDA (there packing only saves Python overhead).
DEFAULT_CPU_PACK_SIZE = 8
#: Upper bound of :func:`choose_pack_size` on CUDA.
MAX_PACK_SIZE = 1024

#: The batched formulations of the study's conv encoder/decoder: name -> module in disentbench.core
BATCHED_FORMULATIONS = {
    "bmm": "disentbench.core.training.packed.bmm",
    "grouped": "disentbench.core.training.packed.grouped",
    "triton": "disentbench.core.training.kernels.triton_conv",
}
#: Every value of ``SpeedOptions.formulation``.
FORMULATIONS = ("auto", "vmap", *BATCHED_FORMULATIONS)

PackedLogFn = Callable[[int, int, dict[str, float]], None]
PackedProgressFn = Callable[[int, int], None]


# =============================================================================
# Speed options
# =============================================================================


@dataclass(frozen=True)
class SpeedOptions:
    """Opt-in speed options. ``formulation``, ``compile``, ``fused_loss`` and ``triton_tuning`` act on every
    device the formulation runs on, the others on CUDA only.

    * ``channels_last``: stacked conv weights and the input batch are laid out so
      that the grouped convolutions of ``vmap`` and ``grouped`` see NHWC tensors
      (cuDNN's tensor-core layout) as views, with no per-step copies.
      Changes layouts only.
    * ``autocast_bf16``: the forward pass under ``torch.autocast(bfloat16)``;
      parameters, Adam state and the loss reductions stay fp32. Not exact: runs
      differ from fp32 ones by rounding (see benchmarks/README.md).
    * ``cuda_graphs``: after ``graph_warmup_steps`` eager iterations (real
      training steps) the compute of one iteration (forward, backward, Adam,
      loss sums) is captured in a CUDA graph and replayed; the random draws stay
      eager, per run. Falls back to eager, with a warning, if capture fails.
    * ``compile``: ``torch.compile`` (experimental): in a batched formulation
      the encoder and decoder of the pack, each as one full graph (on CUDA
      inductor can fuse the layout copies, padding and ReLUs around the GEMMs
      into generated kernels; compiling bmm took 62 s on 2 CPU cores, not yet
      timed on a GPU); under vmap the
      whole packed loss. Falls back to eager, with a warning, if compilation
      fails.
    * ``overlap_sampling`` (default off until measured on a GPU; with
      ``cuda_graphs``): each run's draws for the next step (its batch indices
      and latent noise, about two small kernels per run) are made on a side
      stream, so the GPU can run them next to the replay of the previous step's
      graph instead of between replays; the main stream waits for them and
      copies them into the graph's input buffers. The same generators in the
      same order: the same numbers.
    * ``fused_loss`` (default on; ``"triton"`` formulation only, every device
      it runs on): the Bernoulli reconstruction loss of the model's own loss
      code is computed by a Triton kernel pair, one pass forward and one
      backward, instead of torch's elementwise composite and autocast's
      casts (:mod:`disentbench.core.nets.fused`). Equal to float32 rounding.
    * ``triton_tuning`` (``"triton"`` formulation only): the Triton kernels'
      launch settings for this trainer's steps, in the JSON form of
      :mod:`disentbench.core.training.kernels.tuning` (``{"conv_transpose": {"BLOCK_K":
      64}, ...}``, what ``benchmarks/packed_layers.py --write-tuning`` measures
      on a card); None (default) keeps ``packed_triton.TUNING``, empty (``{}``)
      the built-in heuristic. Launch shapes only: results differ at most by
      summation order.

    ``formulation`` (every device) says how the encoder and decoder of the pack
    are computed: ``"vmap"`` runs each model's whole loss under
    ``torch.func.vmap`` (convolutions become grouped convolutions). The
    *batched* formulations compute the study's conv encoder/decoder of all
    models at once and vmap only the rest of the loss: ``"bmm"`` as batched
    matrix products (:mod:`disentbench.core.training.packed.bmm`), ``"grouped"`` as
    cuDNN grouped convolutions in one persistent NHWC layout
    (:mod:`disentbench.core.training.packed.grouped`) and ``"triton"`` as fused Triton
    kernels (:mod:`disentbench.core.training.kernels.triton_conv`; needs Triton and CUDA, or
    Triton's CPU interpreter). ``"auto"`` (default) takes the fastest
    formulation measured on the device kind where the model allows a batched
    one (the study's conv architecture, reached through
    ``encode``/``sample_latent``/``decode``): ``"triton"`` on CUDA (H200;
    ``"bmm"`` where Triton is missing), ``"grouped"`` elsewhere (2 CPU cores, 4 models at batch 64: 8.2
    model-steps/s against vmap's 6.9 and bmm's ~3x slower), and ``"vmap"`` for
    any other model. ``"auto"`` changes only on a measurement.
    """

    channels_last: bool = False
    autocast_bf16: bool = False
    cuda_graphs: bool = False
    compile: bool = False
    graph_warmup_steps: int = 3
    formulation: str = "auto"
    fused_loss: bool = True
    overlap_sampling: bool = False
    triton_tuning: dict | None = field(default=None, hash=False)

    def __post_init__(self):
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {', '.join(FORMULATIONS)}; got {self.formulation!r}")
        if self.triton_tuning is not None:
            from disentbench.core.training.kernels.tuning import tuning_from_json

            try:
                tuning_from_json(self.triton_tuning)
            except ValueError as exc:
                raise ValueError(f"triton_tuning: {exc}") from None

    def on(self, device: torch.device) -> SpeedOptions:
        """The options that take effect on ``device``: off CUDA only the formulation's (``formulation``,
        ``compile``, ``graph_warmup_steps``, ``fused_loss``, ``triton_tuning``)."""
        if torch.device(device).type == "cuda":
            return self
        return SpeedOptions(
            graph_warmup_steps=self.graph_warmup_steps, formulation=self.formulation, compile=self.compile,
            fused_loss=self.fused_loss, triton_tuning=self.triton_tuning,
        )  # fmt: skip

    @classmethod
    def fastest(cls) -> SpeedOptions:
        return cls(channels_last=True, autocast_bf16=True, cuda_graphs=True)


# =============================================================================
# Random draws: recorded once, replayed per run, substituted inside vmap
# =============================================================================

#: Random functions that must not draw from the global RNG inside a packed loss.
_RANDOM_FUNCTIONS = {
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.rand_like, torch.randn_like,
    torch.randint_like, torch.normal, torch.bernoulli, torch.multinomial, torch.poisson,
    torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.random_, torch.Tensor.bernoulli_,
    torch.Tensor.exponential_, torch.Tensor.geometric_, torch.Tensor.cauchy_, torch.Tensor.log_normal_,
    torch.Tensor.bernoulli, torch.Tensor.multinomial,
}  # fmt: skip


class UnpackableModel(ValueError):
    """The models cannot be trained as one pack (the message says why)."""


@dataclass(frozen=True)
class _TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


@dataclass
class _RandomDraw:
    """One random call of ``loss``, replayable with another generator."""

    func: Callable
    args: tuple
    kwargs: dict
    shape: tuple[int, ...] = ()

    @classmethod
    def record(cls, func, args, kwargs) -> _RandomDraw:
        name = getattr(func, "__name__", str(func))
        if name.endswith("_"):
            raise UnpackableModel(
                f"the loss draws randomness with the in-place {name}(); packed training needs "
                "out-of-place draws (torch.randn(shape, generator=...) and the like)"
            )
        recorded_args = []
        for position, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                if position == 0 and name.endswith("_like"):
                    recorded_args.append(_TensorMeta(tuple(arg.shape), arg.dtype, arg.device))
                    continue
                raise UnpackableModel(
                    f"the loss draws randomness with {name}() from tensor arguments; packed training needs "
                    "draws whose arguments are shapes (they are made per run outside the batched computation)"
                )
            recorded_args.append(arg)
        kwargs = {k: v for k, v in kwargs.items() if k != "generator"}
        if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            raise UnpackableModel(f"the loss draws randomness with {name}() from tensor keyword arguments")
        return cls(func, tuple(recorded_args), kwargs)

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        args = [
            torch.empty(a.shape, dtype=a.dtype, device=a.device) if isinstance(a, _TensorMeta) else a
            for a in self.args
        ]
        return self.func(*args, generator=generator, **self.kwargs)


class _RecordDraws(TorchFunctionMode):
    """Records the random calls made with ``generator``; flags draws from the global RNG."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.generator = generator
        self.draws: list[_RandomDraw] = []
        self.global_draw: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if generator is self.generator:
            draw = _RandomDraw.record(func, args, kwargs)
            result = func(*args, **kwargs)
            draw.shape = tuple(result.shape)
            self.draws.append(draw)
            return result
        if generator is None and func in _RANDOM_FUNCTIONS and self.global_draw is None:
            self.global_draw = getattr(func, "__name__", str(func))
        return func(*args, **kwargs)


class _SubstituteDraws(TorchFunctionMode):
    """Inside the vmapped loss: the k-th call with ``sentinel`` returns the k-th pre-drawn tensor."""

    def __init__(self, sentinel: torch.Generator, draws: Sequence[torch.Tensor], expected: Sequence[_RandomDraw]):
        super().__init__()
        self.sentinel = sentinel
        self.draws = draws
        self.expected = expected
        self.next = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("generator") is self.sentinel:
            if self.next >= len(self.draws):
                raise UnpackableModel("the loss drew more random tensors than on its recorded dry run")
            draw = self.draws[self.next]
            expected = self.expected[self.next]
            if expected.func is not func or tuple(draw.shape) != expected.shape:
                raise UnpackableModel(
                    f"the loss's random calls changed since its dry run (call {self.next}: "
                    f"{getattr(func, '__name__', func)} of shape {tuple(draw.shape)}, "
                    f"recorded {getattr(expected.func, '__name__', expected.func)} of shape {expected.shape})"
                )
            self.next += 1
            return draw
        return func(*args, **kwargs)


class _LossCall(nn.Module):
    """``functional_call`` calls ``forward``; this forwards to the model's ``loss``."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, x, step, generator):
        return self.model.loss(x, step, generator)


# =============================================================================
# The optimizer
# =============================================================================


class StackedAdam:
    """Adam over parameters stacked along dim 0 (one slice per model), elementwise torch.optim.Adam.

    Kingma & Ba 2015, Algorithm 1, in PyTorch's formulation (eps added to
    sqrt(v_hat)). Every per-run quantity (lr, beta1, beta2, eps, step) is a
    length-P tensor broadcast over a parameter's slice; the operations and
    their order are those of torch's non-capturable Adam, so the update of run
    i's slice equals what ``torch.optim.Adam`` does to run i's own parameter
    (to rounding of fused kernels). Bias corrections are computed in float64 on
    the device (torch computes them as Python floats) and rounded to the
    parameter dtype where torch rounds its scalars, so no host sync is needed
    and the step can be captured in a CUDA graph.

    A parameter whose gradient is None is skipped (no state change), as torch
    does; within one StackedAdam all parameters must get gradients together,
    so one step count per run suffices.

    ``fused=True`` (the ``triton`` formulation) updates each stacked float32
    parameter with one Triton kernel (:func:`disentbench.core.training.kernels.triton_conv.adam_step_`:
    the same operations, reading and writing each tensor once) where the
    kernels can run; otherwise the elementwise torch operations below.
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        *,
        lr: Sequence[float],
        beta1: Sequence[float],
        beta2: Sequence[float],
        eps: Sequence[float],
        steps: Sequence[int] | None = None,
        exp_avgs: list[torch.Tensor] | None = None,
        exp_avg_sqs: list[torch.Tensor] | None = None,
        has_state: list[list[bool]] | None = None,
        fused: bool = False,
    ):
        if not params:
            raise ValueError("StackedAdam needs at least one parameter")
        self.params = list(params)
        pack = self.params[0].shape[0]
        device = self.params[0].device
        as64 = lambda values: torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)  # noqa: E731
        self.lr, self.beta1, self.beta2, self.eps = as64(lr), as64(beta1), as64(beta2), as64(eps)
        for name, values in (("lr", self.lr), ("beta1", self.beta1), ("beta2", self.beta2), ("eps", self.eps)):
            if values.shape != (pack,):
                raise ValueError(f"{name} needs {pack} values, one per model; got {tuple(values.shape)}")
        self.steps = as64(steps if steps is not None else [0] * pack)
        self.exp_avgs = exp_avgs if exp_avgs is not None else [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = exp_avg_sqs if exp_avg_sqs is not None else [torch.zeros_like(p) for p in self.params]
        #: has_state[j][i]: whether run i has Adam state for parameter j (torch creates it lazily).
        self.has_state = has_state if has_state is not None else [[False] * pack for _ in self.params]
        self.fused = fused and _fused_adam_supported(self.params)
        self._derived()

    def _derived(self) -> None:
        dtype = self.params[0].dtype
        # torch passes 1 - beta1, beta2, 1 - beta2 and eps as Python scalars that
        # its kernels round to the parameter dtype; these are the same roundings.
        self._one_minus_beta1 = (1 - self.beta1).to(dtype)
        self._beta2 = self.beta2.to(dtype)
        self._one_minus_beta2 = (1 - self.beta2).to(dtype)
        self._eps = self.eps.to(dtype)

    @staticmethod
    def _per_model(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.view((-1,) + (1,) * (like.dim() - 1))

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor | None]) -> None:
        present = [g is not None for g in grads]
        if not any(present):
            return
        if not all(present):
            # Parameters skipped on some steps would need step counts of their own.
            raise NotImplementedError(
                "StackedAdam needs all parameters of an optimizer to get gradients together; "
                f"{present.count(False)} of {len(present)} got None"
            )
        self.steps.add_(1)
        # torch: bias_correction = 1 - beta ** step, step_size = lr / bc1, bc2 ** 0.5 (Python floats).
        bias_correction1 = 1 - self.beta1.pow(self.steps)
        bias_correction2 = 1 - self.beta2.pow(self.steps)
        negative_step_size = (-(self.lr / bias_correction1)).to(self.params[0].dtype)
        bias_correction2_sqrt = bias_correction2.pow(0.5).to(self.params[0].dtype)
        if self.fused:
            from disentbench.core.training.kernels import triton_conv as packed_triton

            scalars = torch.stack(
                [self._one_minus_beta1, self._beta2, self._one_minus_beta2, self._eps,
                 bias_correction2_sqrt, negative_step_size], dim=1,
            )  # fmt: skip
        for j, (param, grad) in enumerate(zip(self.params, grads)):
            if grad is None:  # checked above; this tells the type checker
                raise RuntimeError("a stacked parameter has no gradient")
            if self.fused:
                # the layers' weight gradients are permuted views; one copy beats torch's ~9 elementwise passes
                packed_triton.adam_step_(param, grad.contiguous(), self.exp_avgs[j], self.exp_avg_sqs[j], scalars)
            else:
                shape = lambda values: self._per_model(values, param)  # noqa: E731
                exp_avg, exp_avg_sq = self.exp_avgs[j], self.exp_avg_sqs[j]
                exp_avg.lerp_(grad, shape(self._one_minus_beta1))
                # torch: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2) = v*b2 + ((1-b2)*g)*g
                exp_avg_sq.mul_(shape(self._beta2)).addcmul_(grad * shape(self._one_minus_beta2), grad)
                denom = (exp_avg_sq.sqrt() / shape(bias_correction2_sqrt)).add_(shape(self._eps))
                # torch: param.addcdiv_(exp_avg, denom, value=-step_size) = p + (value * m) / denom
                param.addcdiv_(exp_avg * shape(negative_step_size), denom)
            self.has_state[j][:] = [True] * len(self.has_state[j])

    def select(self, keep: list[int], params: list[torch.Tensor]) -> StackedAdam:
        """The optimizer of the runs at positions ``keep`` (same order), over the compacted ``params``."""
        index = torch.tensor(keep, device=self.steps.device)
        new = StackedAdam.__new__(StackedAdam)
        new.params = list(params)
        new.lr, new.beta1, new.beta2, new.eps = (t[index] for t in (self.lr, self.beta1, self.beta2, self.eps))
        new.steps = self.steps[index]
        new.exp_avgs = [torch.empty_like(p).copy_(t[index]) for p, t in zip(new.params, self.exp_avgs)]
        new.exp_avg_sqs = [torch.empty_like(p).copy_(t[index]) for p, t in zip(new.params, self.exp_avg_sqs)]
        new.has_state = [[row[i] for i in keep] for row in self.has_state]
        new.fused = self.fused
        new._derived()
        return new


# =============================================================================
# The packed trainer
# =============================================================================


@dataclass
class _OptimizerGroup:
    term: str
    names: list[str]  # stacked parameter names (prefixed "model.")
    adams: list[tuple[list[int], StackedAdam]]  # (positions in ``names``, optimizer) per param group


@dataclass
class PackedResult:
    """Per-run outcome of :meth:`PackedTrainer.train`, indexed like the trainer's ``models``."""

    results: list[TrainResult | None]
    errors: list[Exception | None]
    seconds: float
    model_steps: int  # optimizer steps taken by all runs together in this call

    @property
    def failed(self) -> list[int]:
        return [i for i, error in enumerate(self.errors) if error is not None]

    @property
    def finished(self) -> list[int]:
        return [i for i, result in enumerate(self.results) if result is not None]


@dataclass
class _Pack:
    """The stacked state of the runs currently trained together."""

    runs: list[int]  # model indices, in stacked order
    steps: list[int]  # each run's step (host copy)
    counts: list[int]  # iterations summed into ``sums`` since each run's last log
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    hyper: dict[str, torch.Tensor]
    step_tensor: torch.Tensor  # (P,) int64 on the device: the ``step`` passed to loss
    sums: torch.Tensor  # (terms, P): loss terms summed since each run's last log
    groups: list[_OptimizerGroup]
    x: torch.Tensor | None = None  # static input buffers (CUDA graphs)
    draws: list[torch.Tensor] = field(default_factory=list)
    graph: torch.cuda.CUDAGraph | None = None
    eager_iterations: int = 0
    sampled: list = field(default_factory=list)  # overlap_sampling: events of the last steps' input copies


class PackedTrainer:
    """Trains P runs of one model class as one batched computation (see the module docstring).

    ``models[i]`` is built with ``build_model(factory, config_i, shape, seeds[i], device)``
    like a solo run; ``seeds[i]`` is that run's seed (its data and latent streams
    are derived from it as in :class:`~disentbench.core.training.trainer.Trainer`).
    ``checkpoint_paths[i]`` is the run's checkpoint, in Trainer's format, so a
    packed run resumes unpacked and vice versa. Runs may resume from different
    steps; each finishes at ``steps``. After :meth:`train`, ``models[i]`` holds
    run i's trained parameters and ``trainers[i]`` its solo Trainer state.
    """

    def __init__(
        self,
        models: Sequence[Model],
        data: GroundTruthData,
        seeds: Sequence[int],
        *,
        steps: int,
        batch_size: int,
        device: torch.device | str,
        log_every: int = 100,
        checkpoint_every: int = 10_000,
        checkpoint_paths: Sequence[Path | str | None] | None = None,
        speed: SpeedOptions | None = None,
    ):
        models = list(models)
        seeds = [int(s) for s in seeds]
        if not models:
            raise ValueError("a pack needs at least one model")
        if len(seeds) != len(models):
            raise ValueError(f"{len(models)} models but {len(seeds)} seeds")
        if checkpoint_paths is not None and len(checkpoint_paths) != len(models):
            raise ValueError(f"{len(models)} models but {len(checkpoint_paths)} checkpoint paths")
        self.device = torch.device(device)
        self.models = models
        self.data = data
        self.seeds = seeds
        self.steps = steps
        self.batch_size = batch_size
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.speed = (speed or SpeedOptions()).on(self.device)
        self._side_stream: torch.cuda.Stream | None = None  # overlap_sampling's stream, made on first use
        _check_same_architecture(models)
        # Each run keeps a solo Trainer: its generators, checkpoint I/O and
        # state-dict format are the Trainer's own, so formats cannot drift.
        self.trainers = [
            Trainer(
                model, data, seed=seed, steps=steps, batch_size=batch_size, device=self.device,
                log_every=log_every, checkpoint_every=checkpoint_every,
                checkpoint_path=checkpoint_paths[i] if checkpoint_paths is not None else None,
                channels_last=False,
            )
            for i, (model, seed) in enumerate(zip(models, seeds))
        ]  # fmt: skip
        self._hyper_fields = _differing_numeric_fields(models)
        self._template = _detached_copy(models[0], self.trainers[0].optimizers)
        self._template.train()
        self._call = _LossCall(self._template)
        self._sentinel = torch.Generator(device=self.device)
        self._record_dry_run()
        self._vloss = vmap(self._one_model_loss, in_dims=(0, 0, 0, 0, 0, 0), randomness="error")
        #: the number of leading draws that ``sample_latent`` makes (batched formulations only)
        self._latent_draws = 0
        self.formulation = self._choose_formulation()
        if self.formulation in BATCHED_FORMULATIONS:
            self._backend = importlib.import_module(BATCHED_FORMULATIONS[self.formulation])
            self._vsample = vmap(self._one_model_sample, in_dims=(0, 0, 0, 0), randomness="error")
            self._vrest = vmap(self._one_model_rest, in_dims=(0,) * 10, randomness="error")
            self._vloss = self._batched_loss
            self._encode, self._decode = self._backend.encode, self._backend.decode
        self._loss_fn = self._vloss
        # The models' Bernoulli loss runs as this formulation's fused kernel pair (nets.losses.fused_bernoulli).
        self._fused_bernoulli = (
            self._backend.bernoulli_nll_per_sample if self.formulation == "triton" and self.speed.fused_loss else None
        )
        self._launch_settings: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        if self.formulation == "triton" and self.speed.triton_tuning is not None:
            from disentbench.core.training.kernels.tuning import tuning_from_json

            launch = tuning_from_json(self.speed.triton_tuning)
            self._launch_settings = lambda: self._backend.tuned(launch)
        self._compiled = False
        if self.speed.compile:
            self._compile()
        self._pack: _Pack | None = None
        self._results: list[TrainResult | None] = [None] * len(models)
        self._errors: list[Exception | None] = [None] * len(models)
        self._last_terms: list[dict[str, float]] = [{} for _ in models]
        self._resumed_from = [0] * len(models)
        self._started = False
        self._start_time = 0.0
        self._model_steps = 0

    @property
    def _channels_last(self) -> bool:
        """Channels-last stacked layouts serve the grouped convolutions (of vmap and of ``grouped``) only.

        With them the stacked weights *are* channels-last grouped weights and
        the batch *is* the grouped formulation's NHWC image batch, as views.
        """
        return self.speed.channels_last and self.formulation in ("vmap", "grouped")

    # -- set-up -------------------------------------------------------------------
    def _record_dry_run(self) -> None:
        """Run the model's loss once to learn its random calls and term names (no run's state is touched)."""
        throwaway = torch.Generator(device=self.device).manual_seed(0)
        x = self.data.sample_batch_on_device(self.batch_size, throwaway, self.device)
        recorder = _RecordDraws(torch.Generator(device=self.device).manual_seed(0))
        with torch.no_grad(), recorder:
            terms = self._template.loss(x, 0, recorder.generator)
        if recorder.global_draw is not None:
            raise UnpackableModel(
                f"{type(self.models[0]).__name__}.loss draws from the global RNG ({recorder.global_draw}); "
                "packed runs need every draw from the generator passed to loss"
            )
        self._draw_specs = recorder.draws
        self.term_names = list(terms)
        if any(t.dim() != 0 for t in terms.values()):
            raise UnpackableModel("loss terms must be scalars")

    def _one_model_loss(self, params, buffers, x, step, hyper, draws):
        """One run's loss terms; vmapped over the model dimension."""
        with self._hyperparameters(hyper), _SubstituteDraws(self._sentinel, draws, self._draw_specs):
            return functional_call(self._call, {**params, **buffers}, (x, step, self._sentinel))

    @contextlib.contextmanager
    def _hyperparameters(self, hyper):
        """The template's config with this run's differing hyperparameters (0-d tensors under vmap)."""
        template = self._template
        saved = template.config
        if hyper:
            template.config = saved.model_copy(update=hyper)
        try:
            yield
        finally:
            template.config = saved

    # -- the batched formulations (study conv architecture) ---------------------------
    def _choose_formulation(self) -> str:
        wanted = self.speed.formulation
        if wanted == "vmap":
            return "vmap"
        reason = self._batched_unsupported()
        if reason is None:
            if wanted == "auto":
                return auto_formulation(self.device)
            if wanted == "triton":
                from disentbench.core.training.kernels import triton_conv as packed_triton

                reason = packed_triton.available(self.device)
            if reason is None:
                return wanted
        if wanted != "auto":
            raise UnpackableModel(f"formulation {wanted!r} is not possible: {reason}")
        return "vmap"

    def _batched_unsupported(self) -> str | None:
        """Why the batched formulations cannot compute this model's loss (None if they can).

        It needs the model to hand over its networks (``Model.batched_networks``),
        networks these kernels compute (the study's conv encoder/decoder), and a loss that calls
        ``encode`` once, then ``sample_latent`` on its output, then ``decode``
        on that sample (any further use of the encoder/decoder would bypass
        the batched computation). A dry run checks the call order.
        """
        from disentbench.core.training.packed import bmm

        template = self._template
        networks = template.batched_networks()
        if networks is None:
            return "the model overrides encode or decode, or does not offer its networks for batching (Model.batched_networks() is None)"
        encoder, decoder = networks
        if not bmm.computes(encoder, decoder):
            return "the model does not use the study's conv encoder and decoder"
        modules = {module: name for name, module in self._call.named_modules()}
        if encoder not in modules or decoder not in modules:
            return "the networks batched_networks() returns are not submodules of the model"
        self._network_prefixes = (modules[encoder] + ".", modules[decoder] + ".")
        throwaway = torch.Generator(device=self.device).manual_seed(0)
        x = self.data.sample_batch_on_device(self.batch_size, throwaway, self.device)
        recorder = _RecordDraws(torch.Generator(device=self.device).manual_seed(0))
        calls: list[tuple[str, int]] = []
        encode, sample, decode = template.encode, template.sample_latent, template.decode

        def counted_sample(mean, logvar, generator=None):
            calls.append(("sample", len(recorder.draws)))
            z = sample(mean, logvar, generator)
            calls.append(("sampled", len(recorder.draws)))
            return z

        def counted_encode(x):
            calls.append(("encode", len(recorder.draws)))
            return encode(x)

        def counted_decode(z):
            calls.append(("decode", len(recorder.draws)))
            return decode(z)

        with _overridden(template, encode=counted_encode, sample_latent=counted_sample, decode=counted_decode):
            with torch.no_grad(), recorder:
                template.loss(x, 0, recorder.generator)
        kinds = [kind for kind, _ in calls]
        if kinds != ["encode", "sample", "sampled", "decode"] or calls[1][1] != 0:
            return f"its loss calls encode/sample_latent/decode as {kinds}, not once each in that order"
        self._latent_draws = calls[2][1]
        return None

    @contextlib.contextmanager
    def _precomputed(self, mean, logvar, z, logits):
        """The template's encode/sample_latent/decode return this run's batched results."""
        template = self._template

        def sample_latent(m, lv, generator=None):
            if m is not mean or lv is not logvar:
                raise UnpackableModel("the loss passed sample_latent something other than encode's output")
            return z

        def decode(latent):
            if latent is not z:
                raise UnpackableModel("the loss decoded something other than sample_latent's output")
            return logits

        with _overridden(template, encode=lambda x: (mean, logvar), sample_latent=sample_latent, decode=decode):
            yield

    def _one_model_sample(self, mean, logvar, hyper, draws):
        """One run's latent sample from its pre-drawn noise; vmapped."""
        with self._hyperparameters(hyper), _SubstituteDraws(self._sentinel, draws, self._draw_specs):
            return self._template.sample_latent(mean, logvar, self._sentinel)

    def _one_model_rest(self, params, buffers, x, step, hyper, draws, mean, logvar, z, logits):
        """One run's loss terms given its encoder/decoder outputs; vmapped."""
        specs = self._draw_specs[self._latent_draws :]
        with self._hyperparameters(hyper), self._precomputed(mean, logvar, z, logits):
            with _SubstituteDraws(self._sentinel, draws, specs):
                return functional_call(self._call, {**params, **buffers}, (x, step, self._sentinel))

    def _batched_loss(self, params, buffers, x, step, hyper, draws):
        """Every run's loss terms with the encoder and decoder of all runs computed at once (by ``self._backend``)."""
        k = self._latent_draws
        encoder_prefix, decoder_prefix = self._network_prefixes
        mean, logvar = self._encode(params, x, prefix=encoder_prefix)
        z = self._vsample(mean, logvar, hyper, list(draws[:k]))
        logits = self._decode(params, z, prefix=decoder_prefix)
        return self._vrest(params, buffers, x, step, hyper, list(draws[k:]), mean, logvar, z, logits)

    def _compile(self) -> None:
        """``torch.compile`` the batched encoder/decoder (full graphs) or, under vmap, the whole packed loss."""
        if self.formulation in BATCHED_FORMULATIONS:
            self._encode = torch.compile(self._backend.encode, fullgraph=True, dynamic=False)
            self._decode = torch.compile(self._backend.decode, fullgraph=True, dynamic=False)
        else:
            self._loss_fn = torch.compile(self._vloss, dynamic=False)
        self._compiled = True

    def _uncompile(self) -> None:
        if self.formulation in BATCHED_FORMULATIONS:
            self._encode, self._decode = self._backend.encode, self._backend.decode
        self._loss_fn = self._vloss
        self._compiled = False

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._start_time = time.perf_counter()
        for i, trainer in enumerate(self.trainers):
            self._resumed_from[i] = trainer.maybe_resume() if trainer.resumed_from is None else trainer.resumed_from
            trainer.clock_start = self._start_time  # the pack's clock is each run's clock
            trainer._initial = None  # only a resume's restart needs the initial state: not a pack's memory
        done = [i for i, t in enumerate(self.trainers) if t.step >= self.steps]
        for i in done:
            self._finish(i, sync=False)
        self._pack = self._build_pack([i for i in range(len(self.trainers)) if i not in done])
        for i in self._pack.runs if self._pack is not None else []:
            self._drop_solo_adam(i)  # a resumed run's moments now live in the pack

    def _build_pack(self, runs: list[int]) -> _Pack | None:
        """Stack the solo state of ``runs`` (parameters, Adam state, steps) into one pack."""
        if not runs:
            return None
        device = self.device
        models = [self.trainers[i].model for i in runs]
        named = [dict(m.named_parameters()) for m in models]
        names = list(named[0])
        channels_last = self._channels_last
        params = {
            f"model.{n}": _weight_layout(torch.stack([p[n].detach() for p in named]), channels_last)
            for n in names
        }
        for tensor in params.values():
            tensor.requires_grad_(True)
        buffer_names = [n for n, _ in models[0].named_buffers()]
        buffers = {f"model.{n}": torch.stack([dict(m.named_buffers())[n] for m in models]) for n in buffer_names}
        # In the parameters' dtype: a solo run's Python-float hyperparameter is
        # rounded to that dtype by the op it enters.
        dtype = next(iter(params.values())).dtype
        hyper = {
            field_name: torch.tensor([float(getattr(m.config, field_name)) for m in models], dtype=dtype, device=device)
            for field_name in self._hyper_fields
        }
        groups = []
        layout = _optimizer_layout(self.trainers[runs[0]])
        for i in runs[1:]:
            if _optimizer_layout(self.trainers[i]) != layout:
                raise UnpackableModel(f"run {i}'s optimizers (terms, parameter groups) differ from run {runs[0]}'s")
        for k, (term, param_groups) in enumerate(layout):
            per_run = [self.trainers[i].optimizers[k][0] for i in runs]
            group_names: list[str] = []
            adams = []
            for g, param_names in enumerate(param_groups):
                positions = list(range(len(group_names), len(group_names) + len(param_names)))
                group_names += [f"model.{n}" for n in param_names]
                stacked = [params[group_names[j]] for j in positions]
                adams.append((positions, self._stacked_adam(per_run, g, stacked)))
            groups.append(_OptimizerGroup(term, group_names, adams))
        pack = _Pack(
            runs=list(runs),
            steps=[self.trainers[i].step for i in runs],
            counts=[0] * len(runs),
            params=params,
            buffers=buffers,
            hyper=hyper,
            step_tensor=torch.tensor([self.trainers[i].step for i in runs], dtype=torch.int64, device=device),
            # the Trainer sums terms in their own dtype (the parameters'), at least fp32
            sums=torch.zeros(
                len(self.term_names), len(runs), dtype=torch.promote_types(dtype, torch.float32), device=device
            ),
            groups=groups,
        )
        return pack

    def _stacked_adam(
        self, optimizers: list[torch.optim.Optimizer], group: int, params: list[torch.Tensor]
    ) -> StackedAdam:
        """A StackedAdam over ``params`` holding each run's own Adam settings and state."""
        lr, beta1, beta2, eps, steps = [], [], [], [], []
        exp_avgs = [torch.zeros_like(p) for p in params]
        exp_avg_sqs = [torch.zeros_like(p) for p in params]
        has_state = [[False] * len(optimizers) for _ in params]
        for i, opt in enumerate(optimizers):
            _check_plain_adam(opt)
            settings = opt.param_groups[group]
            lr.append(settings["lr"])
            beta1.append(settings["betas"][0])
            beta2.append(settings["betas"][1])
            eps.append(settings["eps"])
            run_steps = set()
            for j, p in enumerate(settings["params"]):
                state = opt.state.get(p)
                if state:
                    run_steps.add(int(_scalar(state["step"])))
                    with torch.no_grad():
                        exp_avgs[j][i].copy_(state["exp_avg"])
                        exp_avg_sqs[j][i].copy_(state["exp_avg_sq"])
                    has_state[j][i] = True
            if len(run_steps) > 1:
                raise UnpackableModel(
                    f"run {i}: Adam state has different step counts per parameter ({sorted(run_steps)})"
                )
            steps.append(run_steps.pop() if run_steps else 0)
        return StackedAdam(
            params, lr=lr, beta1=beta1, beta2=beta2, eps=eps, steps=steps,
            exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, has_state=has_state, fused=self.formulation == "triton",
        )  # fmt: skip

    @property
    def _active(self) -> _Pack:
        """The pack being trained; the per-step methods run only while there is one."""
        if self._pack is None:
            raise RuntimeError("no pack is being trained")
        return self._pack

    # -- exporting runs back to their solo trainers -----------------------------------
    @torch.no_grad()
    def _sync_out(self, position: int) -> None:
        """Write run ``pack.runs[position]``'s slices into its solo model, optimizers and step."""
        pack = self._active
        index = pack.runs[position]
        trainer = self.trainers[index]
        model = trainer.model
        for name, p in model.named_parameters():
            p.copy_(pack.params[f"model.{name}"][position])
        for name, b in model.named_buffers():
            b.copy_(pack.buffers[f"model.{name}"][position])
        for (opt, _), group in zip(trainer.optimizers, pack.groups):
            for param_group, (positions, adam) in zip(opt.param_groups, group.adams):
                step = float(adam.steps[position])
                for p, j in zip(param_group["params"], range(len(positions))):
                    if not adam.has_state[j][position]:
                        opt.state.pop(p, None)
                        continue
                    opt.state[p] = {
                        # torch.optim.Adam's own step dtype (_get_scalar_dtype)
                        "step": torch.tensor(step, dtype=_adam_step_dtype()),
                        "exp_avg": adam.exp_avgs[j][position].clone().contiguous(),
                        "exp_avg_sq": adam.exp_avg_sqs[j][position].clone().contiguous(),
                    }
        trainer.step = pack.steps[position]

    def _drop_solo_adam(self, index: int) -> None:
        """Free the copy of run ``index``'s Adam moments that ``_sync_out`` put into its solo optimizers.

        While the run trains in the pack its stacked state is the only one used;
        keeping a checkpoint's copy until the next one would double every run's
        Adam memory after the first checkpoint (which ``choose_pack_size`` does not
        measure). ``_sync_out`` writes them again whenever they are needed.
        """
        for opt, _ in self.trainers[index].optimizers:
            opt.state.clear()

    def state_dict(self, index: int) -> dict:
        """Run ``index``'s checkpoint dict, exactly ``Trainer.state_dict()``'s format."""
        if self._pack is not None and index in self._pack.runs:
            self._sync_out(self._active.runs.index(index))
        return self.trainers[index].state_dict()

    def _finish(self, index: int, sync: bool = True) -> None:
        if sync:
            self._sync_out(self._active.runs.index(index))
        trainer = self.trainers[index]
        trainer.save_checkpoint()
        trainer.model.eval()
        total = trainer.elapsed_seconds()
        self._results[index] = TrainResult(
            trainer.step - self._resumed_from[index],
            time.perf_counter() - self._start_time,
            self._last_terms[index],
            self._resumed_from[index],
            total if total >= 0 else None,
        )

    def _remove(self, positions: list[int]) -> None:
        """Drop the runs at ``positions`` from the pack (after they finished or failed)."""
        pack = self._active
        keep = [p for p in range(len(pack.runs)) if p not in set(positions)]
        if not keep:
            self._pack = None
            return
        index = torch.tensor(keep, device=self.device)
        params = {
            n: _weight_layout(t.detach()[index], self._channels_last).requires_grad_(True)
            for n, t in pack.params.items()
        }
        groups = [
            _OptimizerGroup(
                g.term,
                g.names,
                [(where, adam.select(keep, [params[g.names[j]] for j in where])) for where, adam in g.adams],
            )
            for g in pack.groups
        ]
        self._pack = _Pack(
            runs=[pack.runs[p] for p in keep],
            steps=[pack.steps[p] for p in keep],
            counts=[pack.counts[p] for p in keep],
            params=params,
            buffers={n: t[index] for n, t in pack.buffers.items()},
            hyper={n: t[index] for n, t in pack.hyper.items()},
            step_tensor=pack.step_tensor[index].clone(),
            sums=pack.sums[:, index].clone(),
            groups=groups,
        )

    # -- one iteration ------------------------------------------------------------------
    def _draw_inputs(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Each run's batch and latent draws, made with its own generators, stacked (fresh tensors)."""
        trainers = [self.trainers[i] for i in self._active.runs]
        x = self._sample_batches(trainers)
        per_run = [[spec.draw(t.latent_generator) for spec in self._draw_specs] for t in trainers]
        return x, [torch.stack([d[k] for d in per_run]) for k in range(len(self._draw_specs))]

    def _fill_static(self, x: torch.Tensor, draws: list[torch.Tensor]) -> None:
        """Copy one step's inputs into the CUDA graph's static buffers."""
        pack = self._active
        if pack.x is None:
            raise RuntimeError("the pack has no static input buffers (no CUDA graph)")
        pack.x.copy_(x)
        for buffer, drawn in zip(pack.draws, draws):
            buffer.copy_(drawn)

    def _sample_inputs(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One step's inputs (:meth:`_draw_inputs`), in the graph's static buffers where it has them."""
        pack = self._active
        x, draws = self._draw_inputs()
        if pack.x is not None:
            self._fill_static(x, draws)
            return pack.x, pack.draws
        if self._channels_last:
            x = _batch_layout(x)
        return x, draws

    def _sample_inputs_aside(self) -> None:
        """``_sample_inputs`` into the graph's buffers, the draws made on a side stream (``overlap_sampling``).

        The draws depend on nothing the graph computes (the generators' states
        live on the host), so they may run while the previous replay does; the
        current stream waits for them before copying them into the static
        buffers, and ``record_stream`` keeps their memory from being reused
        before that copy. The host runs at most two steps ahead of the copies
        (an event per step), which bounds the memory of pending draws.
        """
        pack = self._active
        main = torch.cuda.current_stream(self.device)
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device=self.device)
        if len(pack.sampled) >= 2:
            pack.sampled.pop(0).synchronize()
        with torch.cuda.stream(self._side_stream):
            x, draws = self._draw_inputs()
        main.wait_stream(self._side_stream)
        for t in (x, *draws):
            t.record_stream(main)
        self._fill_static(x, draws)
        pack.sampled.append(main.record_event())

    def _sample_batches(self, trainers: list[Trainer]) -> torch.Tensor:
        """Every run's batch ``(P, N, C, H, W)``, each drawn with the run's own data generator.

        For a dataset that keeps ``GroundTruthData``'s sampling and float
        conversion (no nuisance randomness), only the index draw is per run
        (the same ``randint`` call on the same generator as
        ``sample_batch_on_device``, so the same indices); the image gather and
        conversion then run once for the whole pack instead of once per run.
        """
        data, device, batch = self.data, self.device, self.batch_size
        cls = type(data)
        if cls.sample_batch_on_device is not GroundTruthData.sample_batch_on_device or (
            cls.to_float is not GroundTruthData.to_float
        ):
            return torch.stack([data.sample_batch_on_device(batch, t.data_generator, device) for t in trainers])
        images = data.device_images(device)
        index = torch.empty((len(trainers), batch), dtype=torch.int64, device=images.device)
        for row, trainer in zip(index, trainers):
            torch.randint(images.shape[0], (batch,), generator=trainer.data_generator, device=images.device, out=row)
        return data.to_float(images[index], None)

    def _compute(self, x: torch.Tensor, draws: list[torch.Tensor]) -> None:
        """Forward, per-optimizer gradients, Adam steps and loss sums of one iteration (graph-capturable).

        Under ``speed.triton_tuning``'s launch settings (the triton formulation), so that eager steps and the
        captured graph launch the same kernels.
        """
        with self._launch_settings():
            self._compute_step(x, draws)

    def _compute_step(self, x: torch.Tensor, draws: list[torch.Tensor]) -> None:
        pack = self._active
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
            if self.speed.autocast_bf16
            else contextlib.nullcontext()
        )
        with autocast, losses.fused_bernoulli(self._fused_bernoulli):
            terms = self._loss_fn(pack.params, pack.buffers, x, pack.step_tensor, pack.hyper, draws)
        last = len(pack.groups) - 1
        all_grads = []
        for k, group in enumerate(pack.groups):
            targets = [pack.params[n] for n in group.names]
            # The runs are independent, so d(sum_i term_i)/d(stack) is every run's own gradient.
            all_grads.append(
                torch.autograd.grad(terms[group.term].sum(), targets, retain_graph=k < last, allow_unused=True)
            )
        # Simultaneous update: every gradient is taken before any parameter moves.
        for group, grads in zip(pack.groups, all_grads):
            for positions, adam in group.adams:
                adam.step([grads[j] for j in positions])
        with torch.no_grad():
            pack.sums.add_(torch.stack([terms[n].detach().to(pack.sums.dtype) for n in self.term_names]))
            pack.step_tensor.add_(1)

    def _iteration(self) -> None:
        pack = self._active
        if self.speed.cuda_graphs:
            self._graph_iteration()
        else:
            x, draws = self._sample_inputs()
            self._compute_or_uncompile(x, draws)
        pack.eager_iterations += 1

    def _compute_or_uncompile(self, x: torch.Tensor, draws: list[torch.Tensor]) -> None:
        """``_compute``; if compiled code fails, warn and retry the same inputs eagerly.

        A compile failure raises from the loss call, before any update, so the
        retry leaves every run exactly where an eager step would.
        """
        try:
            self._compute(x, draws)
        except UnpackableModel:
            raise
        except Exception as exc:
            if not self._compiled:
                raise
            warnings.warn(f"torch.compile of the packed loss failed ({exc!r}); continuing eagerly", stacklevel=2)
            self._uncompile()
            self._compute(x, draws)

    def _graph_iteration(self) -> None:
        pack = self._active
        if pack.graph is not None:
            if self.speed.overlap_sampling:
                self._sample_inputs_aside()
            else:
                self._sample_inputs()
            pack.graph.replay()
            return
        if pack.x is None:
            x, draws = self._sample_inputs()
            pack.x = x.clone(memory_format=torch.preserve_format)
            pack.draws = [d.clone() for d in draws]
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            if pack.eager_iterations > 0:
                self._sample_inputs()
            self._compute_or_uncompile(pack.x, pack.draws)  # a real training step (warm-up)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if pack.eager_iterations + 1 < self.speed.graph_warmup_steps:
            return
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._compute(pack.x, pack.draws)  # captured, not executed
        except Exception as exc:  # pragma: no cover - CUDA only
            warnings.warn(f"CUDA graph capture failed ({exc!r}); continuing eagerly", stacklevel=2)
            self.speed = replace(self.speed, cuda_graphs=False)
            return
        pack.graph = graph

    # -- the loop ---------------------------------------------------------------------------
    def advance(
        self, iterations: int, on_log: PackedLogFn | None = None, on_progress: PackedProgressFn | None = None
    ) -> int:
        """Run up to ``iterations`` packed iterations (one step of every active run each); returns how many ran.

        ``train`` is ``advance`` until every run finished or failed; benchmarks
        use ``advance`` to time a fixed number of iterations.
        """
        self._start()
        done = 0
        while done < iterations and self._pack is not None:
            pack = self._active
            self._iteration()
            done += 1
            self._model_steps += len(pack.runs)
            pack.steps = [s + 1 for s in pack.steps]
            pack.counts = [c + 1 for c in pack.counts]
            due = [p for p, s in enumerate(pack.steps) if s % self.log_every == 0 or s == self.steps]
            failed = self._log(due, on_log, on_progress) if due else []
            for p, s in enumerate(pack.steps):
                if p not in failed and s % self.checkpoint_every == 0 and s < self.steps:
                    index = pack.runs[p]
                    self._sync_out(p)
                    self.trainers[index].save_checkpoint()
                    self._drop_solo_adam(index)
            finished = [p for p, s in enumerate(pack.steps) if s >= self.steps and p not in failed]
            for p in failed:
                self._sync_out(p)  # the solo model holds what a solo run would hold when it raised
            for p in finished:
                self._finish(pack.runs[p])
            if failed or finished:
                self._remove(sorted(set(failed) | set(finished)))
        return done

    def _log(self, positions: list[int], on_log, on_progress) -> list[int]:
        """Host sync for the runs at ``positions``: mean terms, failure check, callbacks. Returns failed positions."""
        pack = self._active
        index = torch.tensor(positions, device=self.device)
        counts = torch.tensor([pack.counts[p] for p in positions], dtype=pack.sums.dtype, device=self.device)
        means = (pack.sums[:, index] / counts).T.tolist()  # the only host sync
        failed = []
        for p, values in zip(positions, means):
            run = pack.runs[p]
            terms = dict(zip(self.term_names, values))
            if not all(math.isfinite(v) for v in values):
                self._errors[run] = NonFiniteLoss(pack.steps[p], terms)
                failed.append(p)
                continue
            self._last_terms[run] = terms
            if on_log:
                on_log(run, pack.steps[p], terms)
            if on_progress:
                on_progress(run, pack.steps[p])
        pack.sums[:, index] = 0.0
        for p in positions:
            pack.counts[p] = 0
        return failed

    def train(self, on_log: PackedLogFn | None = None, on_progress: PackedProgressFn | None = None) -> PackedResult:
        """Train every run to ``steps`` (resuming each from its checkpoint); failures are reported, not raised."""
        self._start()
        steps_before = self._model_steps
        while self._pack is not None:
            self.advance(max(1, self.steps), on_log, on_progress)
        return PackedResult(
            results=list(self._results),
            errors=list(self._errors),
            seconds=time.perf_counter() - self._start_time,
            model_steps=self._model_steps - steps_before,
        )

    def current_terms(self, reset: bool = False) -> dict[int, dict[str, float]]:
        """Each active run's mean loss terms since its last log (one host sync).

        ``reset=True`` also restarts the averaging window (the next log then
        averages only the steps after this call); benchmarks use it to time a window.
        """
        pack = self._pack
        if pack is None:
            return {}
        counts = torch.tensor([max(c, 1) for c in pack.counts], dtype=pack.sums.dtype, device=self.device)
        means = (pack.sums / counts).T.tolist()
        terms = {run: dict(zip(self.term_names, v)) for run, v, c in zip(pack.runs, means, pack.counts) if c}
        if reset:
            pack.sums.zero_()
            pack.counts = [0] * len(pack.runs)
        return terms

    @property
    def active_runs(self) -> list[int]:
        return list(self._pack.runs) if self._pack is not None else []


# =============================================================================
# Pack size
# =============================================================================


class _RandomImages(GroundTruthData):
    """A stand-in dataset for memory probes: random binary images of a given shape."""

    name = "random_images"
    factor_names = ("index",)
    pixel_scale = 1.0

    def __init__(self, observation_shape: tuple[int, int, int], count: int = 256):
        self.factor_sizes = (count,)
        rng = np.random.default_rng(0)
        self._images = (rng.random((count, *observation_shape)) < 0.2).astype(np.uint8)

    @property
    def images(self):
        return self._images


def choose_pack_size(
    model_factory: Callable[[], Model],
    device: torch.device | str,
    batch_size: int,
    free_memory_fraction: float = 0.8,
    *,
    default: int = DEFAULT_CPU_PACK_SIZE,
    maximum: int = MAX_PACK_SIZE,
    speed: SpeedOptions | None = None,
    observation_shape: tuple[int, int, int] | None = None,
    reserved_bytes: int = 0,
) -> int:
    """How many runs of ``model_factory()`` fit one pack on ``device``.

    On CUDA: the peak memory (``torch.cuda.max_memory_allocated``) of two
    training steps is measured for packs of 1 and 2 models; their difference is
    one model's share (parameters, gradients, Adam state, activations at
    ``batch_size``) and the rest is fixed overhead; the pack size is
    ``(free_memory_fraction * free memory - reserved_bytes - overhead) / share``,
    at least 1 and at most ``maximum``. ``reserved_bytes`` is what will be on
    the device by then but is not yet (the dataset's images). Elsewhere:
    ``default``.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return default
    probe = model_factory().to(device)
    shape = observation_shape or getattr(probe, "observation_shape", None)
    if shape is None:
        raise ValueError("pass observation_shape: the model does not say which inputs it takes")
    data = _RandomImages(tuple(shape), count=max(batch_size, 64))
    data.device_images(device)
    del probe

    def peak(pack_size: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        trainer = PackedTrainer(
            [model_factory().to(device) for _ in range(pack_size)], data, list(range(pack_size)),
            steps=2, batch_size=batch_size, device=device, log_every=2, speed=speed,
        )  # fmt: skip
        trainer.train()
        torch.cuda.synchronize(device)
        used = torch.cuda.max_memory_allocated(device) - base
        del trainer
        return used

    one, two = peak(1), peak(2)
    share = max(two - one, 1)
    overhead = max(one - share, 0)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(maximum, (free_memory_fraction * free - reserved_bytes - overhead) // share)))


# =============================================================================
# Helpers
# =============================================================================


@contextlib.contextmanager
def _overridden(obj, **methods):
    """``obj``'s methods replaced by instance attributes for the duration (the class is untouched)."""
    for name, method in methods.items():
        setattr(obj, name, method)
    try:
        yield
    finally:
        for name in methods:
            obj.__dict__.pop(name, None)


def _check_same_architecture(models: list[Model]) -> None:
    first = models[0]
    shapes = [(n, tuple(p.shape), p.dtype) for n, p in first.named_parameters()]
    for i, model in enumerate(models[1:], start=1):
        if type(model) is not type(first):
            raise UnpackableModel(f"model {i} is a {type(model).__name__}, model 0 a {type(first).__name__}")
        other = [(n, tuple(p.shape), p.dtype) for n, p in model.named_parameters()]
        if other != shapes:
            raise UnpackableModel(f"model {i} has other parameters (names, shapes or dtypes) than model 0")
        if any(p.device != first_p.device for p, first_p in zip(model.parameters(), first.parameters())):
            raise UnpackableModel(f"model {i} is on another device than model 0")


def _differing_numeric_fields(models: list[Model]) -> list[str]:
    """Config fields whose values differ inside the pack; they must be numbers (they become per-run tensors)."""
    configs = [m.config for m in models]
    fields = []
    for name in type(configs[0]).model_fields:
        values = [getattr(c, name) for c in configs]
        if all(v == values[0] for v in values[1:]):
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            fields.append(name)
        else:
            raise UnpackableModel(
                f"config field {name!r} differs inside the pack ({values}); only numeric hyperparameters may differ"
            )
    return fields


def _check_plain_adam(optimizer: torch.optim.Optimizer) -> None:
    if not isinstance(optimizer, torch.optim.Adam):
        raise UnpackableModel(f"packed training supports Adam only, not {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        for key, plain in (("weight_decay", 0), ("amsgrad", False), ("maximize", False), ("differentiable", False)):
            if group.get(key, plain) != plain:
                raise UnpackableModel(f"packed Adam supports {key}={plain!r} only; got {group.get(key)!r}")
        if any(isinstance(group[key], torch.Tensor) for key in ("lr",)) or isinstance(group["betas"][0], torch.Tensor):
            raise UnpackableModel("packed Adam needs Python-number hyperparameters")


def _optimizer_layout(trainer: Trainer) -> list[tuple[str, list[list[str]]]]:
    """``[(term, [parameter names of each param group])]`` of a run's optimizers."""
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    layout = []
    for opt, term in trainer.optimizers:
        groups = []
        for group in opt.param_groups:
            if any(id(p) not in names for p in group["params"]):
                raise UnpackableModel("an optimizer holds a tensor that is not a parameter of its model")
            groups.append([names[id(p)] for p in group["params"]])
        layout.append((term, groups))
    return layout


#: ``auto``'s batched formulation per device type, fastest measured first (benchmarks/README.md): on an
#: H200, triton 4,807 model-steps/s (bf16, 512 models) against bmm's 2,880 and grouped's 2,055; on 2 CPU
#: cores grouped 8.2 against vmap's 6.9 and bmm's ~3x slower. A formulation that cannot run (triton
#: without Triton) gives way to the next.
AUTO_PREFERENCE = {"cuda": ("triton", "bmm")}
_AUTO_ELSEWHERE = ("grouped",)


def auto_formulation(device: torch.device | str) -> str:
    """The batched formulation ``auto`` uses on ``device`` for a model that allows one."""
    from disentbench.core.training.kernels import triton_conv as packed_triton

    preference = AUTO_PREFERENCE.get(torch.device(device).type, _AUTO_ELSEWHERE)
    for name in preference:
        if name != "triton" or packed_triton.available(device) is None:
            return name
    return preference[-1]


def _fused_adam_supported(params: list[torch.Tensor]) -> bool:
    """Whether the Triton Adam kernel can update every one of ``params`` (packed_triton imports without Triton)."""
    from disentbench.core.training.kernels import triton_conv as packed_triton

    return all(packed_triton.adam_supported(p) for p in params)


def _adam_step_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _scalar(value) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _detached_copy(model: Model, optimizers) -> Model:
    """A structural copy of ``model`` for functional calls; its own parameters are never used.

    The model's optimizers (and their state) are not copied: the memo maps them to None.
    """
    import copy

    return copy.deepcopy(model, memo={id(opt): None for opt, _ in optimizers})


def _batch_layout(batch: torch.Tensor) -> torch.Tensor:
    """A stacked batch (P, N, C, H, W) stored as [N][H][W][P][C].

    vmap folds the model dimension into the channel dimension of a grouped
    convolution, (N, P*C, H, W); with this layout that folded tensor is
    channels-last (NHWC) without a copy.
    """
    p, n, c, h, w = batch.shape
    out = torch.empty((n, h, w, p, c), dtype=batch.dtype, device=batch.device).permute(3, 0, 4, 1, 2)
    return out.copy_(batch)


def _weight_layout(stacked: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A stacked parameter, contiguous; with ``channels_last``, conv kernels (P, O, I, kh, kw) as [P][O][kh][kw][I].

    vmap folds P into the kernels' leading dimension, (P*O, I, kh, kw); with
    this layout that is a channels-last kernel without a copy.
    """
    if not channels_last or stacked.dim() != 5:
        return stacked.contiguous()
    p, o, i, kh, kw = stacked.shape
    out = torch.empty((p, o, kh, kw, i), dtype=stacked.dtype, device=stacked.device).permute(0, 1, 4, 2, 3)
    return out.copy_(stacked)
