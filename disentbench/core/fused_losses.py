"""The switch for fused loss kernels: off everywhere but inside the packed trainer's ``triton`` formulation.

Model plugins compute their reconstruction terms with the shared functions of
:mod:`disentbench.plugins.models.architectures`; while :func:`enabled` is
active, :func:`bernoulli_nll_per_sample` hands the Bernoulli one to a Triton
kernel pair (:func:`disentbench.core.packed_triton.bernoulli_nll_per_sample`:
one pass forward, one backward, in place of torch's composite of about ten
elementwise passes plus autocast's casts). Everywhere else (one-by-one
training, evaluation, the other formulations) torch computes it, so the switch
changes speed, not what is computed beyond float32 rounding. Importing this
module does not import Triton.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("disentbench_fused_losses", default=False)


@contextlib.contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """Switch the fused loss kernels on (or off) inside the block."""
    token = _ENABLED.set(on)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def bernoulli_nll_per_sample(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """The fused per-sample Bernoulli NLL sums where switched on and applicable, else None (use torch's)."""
    if not _ENABLED.get():
        return None
    from disentbench.core import packed_triton

    return packed_triton.bernoulli_nll_per_sample(logits, x)
