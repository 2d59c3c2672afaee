"""The loss terms shared by the VAE-family models (spec/study.md §1.4), and the fused-kernel switch.

While :func:`fused_bernoulli` is active (the packed trainer turns it on inside
its ``triton`` formulation only), :func:`bernoulli_reconstruction_loss` hands the
per-sample Bernoulli NLL to the kernel it was given (one pass forward, one
backward, in place of torch's composite of about ten elementwise passes plus
autocast's casts); the kernel returns None where it does not apply. Everywhere
else (one-by-one training, evaluation, the other formulations) torch computes
it, so the switch changes speed, not what is computed beyond float32 rounding.
The kernel is handed in rather than imported so that the networks know nothing
of the training layer (and importing this module does not import Triton).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

#: ``kernel(logits, x) -> per-sample NLL (N,) or None`` (None: not applicable, use torch's).
FusedBernoulli = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]

_FUSED_BERNOULLI: contextvars.ContextVar[FusedBernoulli | None] = contextvars.ContextVar(
    "disentbench_fused_bernoulli", default=None
)


@contextlib.contextmanager
def fused_bernoulli(kernel: FusedBernoulli | None) -> Iterator[None]:
    """Inside the block, the Bernoulli loss uses ``kernel`` where it applies (``None``: torch's, as outside)."""
    token = _FUSED_BERNOULLI.set(kernel)
    try:
        yield
    finally:
        _FUSED_BERNOULLI.reset(token)


def bernoulli_reconstruction_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood (spec §1.4, ``bernoulli_loss``).

    For each sample, sums ``sigmoid_cross_entropy_with_logits`` over all pixels
    and channels, then averages over the batch. Targets may be continuous in
    [0, 1], and no entropy offset is subtracted. Per element this is
    ``max(l, 0) - l * x + log(1 + exp(-|l|))``.
    """
    if logits.shape != x.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} != observation shape {tuple(x.shape)}")
    kernel = _FUSED_BERNOULLI.get()  # None unless the packed trainer switched a fused kernel on
    per_sample = kernel(logits, x) if kernel is not None else None
    if per_sample is None:
        per_element = F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
        per_sample = per_element.flatten(start_dim=1).sum(dim=1)
    return per_sample.mean()


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over latents and averaged over the batch (spec §1.4).

    ``0.5 * sum_d (mean_d^2 + exp(logvar_d) - logvar_d - 1)``
    (Kingma & Welling 2014, Appendix B).
    """
    per_sample = 0.5 * (mean.square() + logvar.exp() - logvar - 1.0).sum(dim=1)
    return per_sample.mean()
