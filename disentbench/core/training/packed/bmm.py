"""The study's conv encoder and deconv decoder for P stacked models, as batched matrix products.

:class:`~disentbench.core.training.packed.trainer.PackedTrainer` can run any model's loss
under ``torch.func.vmap``; vmap turns each convolution into one *grouped*
convolution with P groups. cuDNN's grouped-convolution kernels (above all
their weight gradients) are far slower per FLOP than its dense ones, so for
the study's own architecture (``core/nets/conv.py``:
``ConvEncoder``/``DeconvDecoder``) this module computes the encoder and
decoder of all P models directly as strided batched GEMMs (the model index
is the GEMM batch), which cuBLAS runs on tensor cores:

* activations are kept per model in ``(P, N, H, W, C)`` layout, so every
  layer is ``(P, rows, K) @ (P, K, C_out)``;
* a 4x4 stride-2 convolution (padding 1) is a 2x2 stride-1 convolution of
  the space-to-depth of its padded input (one copy of the input). Over that
  tensor's flat rows each of the 2x2 taps is a *view* shifted by a constant
  number of rows (implicit GEMM: no im2col), so the layer is four
  accumulating batched GEMMs on strided views, computed on a grid one row
  and column larger than the output (the extra ones are dropped; the output
  is a strided view). Its backward pass (:class:`_Conv4x4S2`) is written by
  hand in the same way: the weight gradient of each tap is one GEMM with a
  transposed view, the input gradient is accumulated in place into shifted
  views of one zeroed buffer and mapped back with one copy;
* a 2x2 stride-2 convolution needs no gather: the patches are a permutation
  of the input (space-to-depth);
* a 4x4 stride-2 transposed convolution (padding 1) with at least as many
  output as input channels is split into its four output phases: output
  pixel ``(2m+a, 2n+b)`` receives the 2x2 window of the padded input at
  ``(m+a, n+b)`` through kernel taps ``(3-a-2r, 3-b-2s)``. Each of the nine
  window shifts is again a shifted view of the flat padded input, and all
  phases that use a shift share one GEMM (11 GEMMs for the 16 phase-taps,
  into a ``[phase][o]`` matrix on the padded grid), followed by one
  interleaving copy; its backward pass (:class:`_Deconv4x4S2`) mirrors this.
  One with fewer output channels (64 -> 32, and the last layer 32 -> C)
  multiplies each input pixel into its 16 taps' outputs and sums them with
  ``F.fold`` (col2im), which moves ``C_out / C_in`` as many bytes;
* bias additions are fused into the GEMMs (``baddbmm``).

The two hand-written layers are autograd Functions that run their
GEMMs in autocast's dtype when autocast is on (casting inputs and weights
themselves) and return gradients in the inputs' dtypes. Everything is
device-side (no index tensors made from host data, no synchronisation, no
data-dependent shapes), so the whole computation can be captured in a CUDA
graph. The rest is plain differentiable torch code, and everything computes
the same function as the modules: tests compare with the per-model modules
in float64 (to 1e-12), check the hand-written backward passes with
``gradcheck``, and train through them (``tests/test_packed.py``).

Parameter names and layouts are the modules' own (``encoder.convs.0.weight``
of shape ``(P, 32, C, 4, 4)`` and so on), so stacked parameters, checkpoints
and Adam state are shared with the vmap path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from disentbench.core.nets.conv import ConvEncoder, DeconvDecoder

# The layer names come from the network classes, which own their layout.
_ENCODER_CONVS = ConvEncoder.CONV_LAYERS
_ENCODER_DENSE = ConvEncoder.DENSE_LAYER
_DECODER_DENSE = DeconvDecoder.DENSE_LAYERS
_DECODER_DECONVS = DeconvDecoder.DECONV_LAYERS


def computes(encoder: nn.Module, decoder: nn.Module) -> bool:
    """Whether these kernels compute ``encoder`` and ``decoder``: exactly the study's conv architecture."""
    return type(encoder) is ConvEncoder and type(decoder) is DeconvDecoder


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype the GEMMs run in: autocast's where it is on (as for ``baddbmm``), else the input's."""
    device = h.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return h.dtype


def _rows(flat: torch.Tensor, offset: int, rows: int) -> torch.Tensor:
    """Rows ``offset .. offset+rows`` of every model's flat ``(P, T, K)`` matrix: a strided view, no copy."""
    return flat[:, offset : offset + rows]


class _Conv4x4S2(torch.autograd.Function):
    """4x4 conv, stride 2, padding 1, as four shifted GEMMs over the space-to-depth of the padded input.

    With ``xp`` the input padded by 1, output ``(y, x)`` is the sum over
    ``kh = 2r + dh``, ``kw = 2s + dw`` of ``xp[2(y+r)+dh, 2(x+s)+dw] @ W[kh, kw]``.
    The space-to-depth ``S[i, j, (dh, dw, c)] = xp[2i+dh, 2j+dw, c]`` (one copy of
    the input, ``Hs x Ws = (H/2+1) x (W/2+1)`` pixels of ``4C`` channels) turns
    this into a 2x2 stride-1 conv: ``out[y, x] = sum_{r,s} S[y+r, x+s] @ W_rs``.
    Over the flat rows of ``S`` (all images of a model one after another, and
    ``Ws + 1`` zero rows after the last one) tap ``(r, s)`` is the view of the
    rows shifted by ``r*Ws + s``, so each tap is one batched GEMM on a view.
    The outputs are computed on the whole ``Hs x Ws`` grid of each image; its
    last row and column (which mix neighbouring rows and images) are dropped,
    so the result is a strided view.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, dtype):
        p, n, height, width, c = h.shape
        o = weight.shape[1]
        hs, ws = height // 2 + 1, width // 2 + 1
        rows = n * hs * ws
        with torch.autocast(h.device.type, enabled=False):
            s_flat = h.new_zeros((p, rows + ws + 1, 4 * c), dtype=dtype)
            # (P, N, Hs, dh, Ws, dw, C): the padded input xp, row 2i+dh, column 2j+dw
            xp = s_flat[:, :rows].view(p, n, hs, ws, 2, 2, c).permute(0, 1, 2, 4, 3, 5, 6)
            for dh in (0, 1):
                for dw in (0, 1):
                    # xp row 2i+dh holds input row 2i+dh-1 (i from 1-dh): input rows 1-dh, 3-dh, ...
                    xp[:, :, 1 - dh : hs - dh, dh, 1 - dw : ws - dw, dw].copy_(h[:, :, 1 - dh :: 2, 1 - dw :: 2])
            # (P, O, C, kh, kw) -> (P, r, s, dh, dw, C, O) -> (P, 4 taps, 4C rows [dh][dw][c], O)
            kernel = weight.to(dtype).view(p, o, c, 2, 2, 2, 2).permute(0, 3, 5, 4, 6, 2, 1).reshape(p, 4, 4 * c, o)
            out = torch.baddbmm(bias.to(dtype).unsqueeze(1), _rows(s_flat, 0, rows), kernel[:, 0])
            for tap, offset in ((1, 1), (2, ws), (3, ws + 1)):
                out.baddbmm_(_rows(s_flat, offset, rows), kernel[:, tap])
        ctx.save_for_backward(s_flat, kernel)
        ctx.shape = (p, n, height, width, c, o)
        ctx.dtypes = (h.dtype, weight.dtype, bias.dtype)
        return out.view(p, n, hs, ws, o)[:, :, : hs - 1, : ws - 1]

    @staticmethod
    def backward(ctx, grad):
        s_flat, kernel = ctx.saved_tensors
        p, n, height, width, c, o = ctx.shape
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        hs, ws = height // 2 + 1, width // 2 + 1
        rows = n * hs * ws
        offsets = (0, 1, ws, ws + 1)
        grad_h = grad_weight = grad_bias = None
        with torch.autocast(grad.device.type, enabled=False):
            grad_full = grad.new_zeros((p, rows, o), dtype=s_flat.dtype)  # zero on the dropped grid row/column
            grad_full.view(p, n, hs, ws, o)[:, :, : hs - 1, : ws - 1].copy_(grad)
            if ctx.needs_input_grad[0]:
                grad_s = torch.zeros_like(s_flat)
                for tap, offset in enumerate(offsets):
                    _rows(grad_s, offset, rows).baddbmm_(grad_full, kernel[:, tap].transpose(1, 2))
                grad_xp = (
                    grad_s[:, :rows].view(p, n, hs, ws, 2, 2, c).permute(0, 1, 2, 4, 3, 5, 6)
                    .reshape(p, n, height + 2, width + 2, c)
                )
                grad_h = grad_xp[:, :, 1 : height + 1, 1 : width + 1].to(h_dtype)
            if ctx.needs_input_grad[1]:
                grad_kernel = torch.stack(
                    [torch.bmm(_rows(s_flat, offset, rows).transpose(1, 2), grad_full) for offset in offsets], dim=1
                )  # (P, 4 taps, 4C, O)
                grad_weight = (
                    grad_kernel.view(p, 2, 2, 2, 2, c, o).permute(0, 6, 5, 1, 3, 2, 4).reshape(p, o, c, 4, 4).to(w_dtype)
                )
            if ctx.needs_input_grad[2]:
                grad_bias = grad_full.sum(1, dtype=b_dtype)
        return grad_h, grad_weight, grad_bias, None


def _conv4x4_s2(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """4x4 conv, stride 2, padding 1: ``h (P,N,H,W,C) -> (P,N,H/2,W/2,O)``; weight (P,O,C,4,4).

    Returns a strided view (see :class:`_Conv4x4S2`).
    """
    return _Conv4x4S2.apply(h, weight, bias, _compute_dtype(h))


def _conv2x2_s2(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """2x2 conv, stride 2, no padding: non-overlapping patches (space-to-depth), then one GEMM."""
    p, n, height, width, c = h.shape
    out_h, out_w = height // 2, width // 2
    cols = h.view(p, n, out_h, 2, out_w, 2, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(p, n * out_h * out_w, 4 * c)
    kernel = weight.permute(0, 3, 4, 2, 1).reshape(p, 4 * c, -1)  # rows [kh][kw][c]
    out = torch.baddbmm(bias.unsqueeze(1), cols, kernel)
    return out.view(p, n, out_h, out_w, -1)


def _deconv_groups() -> tuple[tuple[int, int, int, int, tuple[tuple[int, int], ...]], ...]:
    """The GEMMs of the window-form transposed conv: ``(dr, dc, phase_lo, phase_hi, kernel taps)``.

    Output phase ``(a, b)`` at grid ``(m, n)`` takes padded input ``(m+dr, n+dc)``,
    ``dr = a + r``, ``dc = b + s``, through kernel tap ``(3-a-2r, 3-b-2s) =
    (3+a-2dr, 3+b-2dc)``. The phases (index ``2a+b``) that use a shift are
    grouped into runs of consecutive indices, so that one GEMM serves each run
    (its output columns are contiguous in the ``[phase][o]`` layout). The first
    group is the centre shift ``(1, 1)``, used by all four phases.
    """
    groups = []
    for dr, dc in [(1, 1)] + [(dr, dc) for dr in range(3) for dc in range(3) if (dr, dc) != (1, 1)]:
        phases = [2 * a + b for a in (0, 1) for b in (0, 1) if 0 <= dr - a <= 1 and 0 <= dc - b <= 1]
        runs: list[list[int]] = []
        for ph in phases:
            if runs and runs[-1][-1] == ph - 1:
                runs[-1].append(ph)
            else:
                runs.append([ph])
        for run in runs:
            taps = tuple((3 + ph // 2 - 2 * dr, 3 + ph % 2 - 2 * dc) for ph in run)
            groups.append((dr, dc, run[0], run[-1] + 1, taps))
    return tuple(groups)


_DECONV_GROUPS = _deconv_groups()
# column of each kernel tap (kh, kw) in the concatenated group kernels, in units of O
_DECONV_TAP_COLUMN = {
    tap: column
    for column, tap in enumerate(tap for group in _DECONV_GROUPS for tap in group[4])
}
assert sorted(_DECONV_TAP_COLUMN) == [(kh, kw) for kh in range(4) for kw in range(4)]


class _Deconv4x4S2(torch.autograd.Function):
    """4x4 transposed conv, stride 2, padding 1, as shifted GEMMs over the flat padded input.

    Output ``(2m+a, 2n+b)`` = sum over the input window rows ``m-1+a+r``,
    columns ``n-1+b+s`` (r, s in {0, 1}) through kernel tap ``(3-a-2r, 3-b-2s)``.
    With the input padded by 1 and flattened per model to rows of ``C``
    (``(H+2)*(W+2)`` per image, and ``2(W+2)+2`` zero rows after the last), the
    window pixel ``(r, s)`` of phase ``(a, b)`` is the view of the rows shifted
    by ``(a+r)*(W+2) + (b+s)``. All four phases are computed on the padded
    ``(H+2) x (W+2)`` grid into one ``(rows, [phase][o])`` matrix, one GEMM per
    shift and run of phases (:func:`_deconv_groups`: 11 GEMMs for the 16
    phase-taps); the valid ``H x W`` part is then interleaved into the output
    (one copy).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, dtype):
        p, n, height, width, c = h.shape
        o = weight.shape[2]
        wp = width + 2
        rows = n * (height + 2) * wp
        with torch.autocast(h.device.type, enabled=False):
            x_flat = h.new_zeros((p, rows + 2 * wp + 2, c), dtype=dtype)
            x_flat[:, :rows].view(p, n, height + 2, wp, c)[:, :, 1 : height + 1, 1 : width + 1].copy_(h)
            w = weight.to(dtype)
            # (P, C, 16*O): the groups' kernels side by side (basic indexing only: no index tensors)
            kernels = torch.cat([w[:, :, :, kh, kw] for g in _DECONV_GROUPS for kh, kw in g[4]], dim=2)
            b = bias.to(dtype)
            out = None
            column = 0
            for dr, dc, lo, hi, taps in _DECONV_GROUPS:
                x_view = _rows(x_flat, dr * wp + dc, rows)
                k_view = kernels[:, :, column * o : (column + len(taps)) * o]
                column += len(taps)
                if out is None:  # the centre shift: all four phases, with the bias
                    out = torch.baddbmm(b.repeat(1, 4).unsqueeze(1), x_view, k_view)  # (P, rows, 4*O)
                else:
                    out[:, :, lo * o : hi * o].baddbmm_(x_view, k_view)
            result = h.new_empty((p, n, 2 * height, 2 * width, o), dtype=dtype)
            phases = out.view(p, n, height + 2, wp, 2, 2, o)[:, :, :height, :width]  # (P, N, H, W, a, b, O)
            result.unflatten(3, (width, 2)).unflatten(2, (height, 2)).copy_(phases.permute(0, 1, 2, 4, 3, 5, 6))
        ctx.save_for_backward(x_flat, kernels)
        ctx.shape = (p, n, height, width, c, o)
        ctx.dtypes = (h.dtype, weight.dtype, bias.dtype)
        return result

    @staticmethod
    def backward(ctx, grad):
        x_flat, kernels = ctx.saved_tensors
        p, n, height, width, c, o = ctx.shape
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        wp = width + 2
        rows = n * (height + 2) * wp
        grad_h = grad_weight = grad_bias = None
        with torch.autocast(grad.device.type, enabled=False):
            grad_out = grad.new_zeros((p, rows, 4 * o), dtype=x_flat.dtype)  # zero off the valid H x W
            phases = grad_out.view(p, n, height + 2, wp, 2, 2, o)[:, :, :height, :width].permute(0, 1, 2, 4, 3, 5, 6)
            phases.copy_(grad.unflatten(3, (width, 2)).unflatten(2, (height, 2)))
            grad_x = torch.zeros_like(x_flat) if ctx.needs_input_grad[0] else None
            grad_kernels = []
            column = 0
            for dr, dc, lo, hi, taps in _DECONV_GROUPS:
                offset = dr * wp + dc
                g_view = grad_out[:, :, lo * o : hi * o]
                k_view = kernels[:, :, column * o : (column + len(taps)) * o]
                column += len(taps)
                if grad_x is not None:
                    _rows(grad_x, offset, rows).baddbmm_(g_view, k_view.transpose(1, 2))
                if ctx.needs_input_grad[1]:
                    grad_kernels.append(torch.bmm(_rows(x_flat, offset, rows).transpose(1, 2), g_view))
            if grad_x is not None:
                grad_h = grad_x[:, :rows].view(p, n, height + 2, wp, c)[:, :, 1 : height + 1, 1 : width + 1].to(h_dtype)
            if ctx.needs_input_grad[1]:
                grad_k = torch.cat(grad_kernels, dim=2).view(p, c, 16, o)
                grad_weight = torch.stack(
                    [grad_k[:, :, _DECONV_TAP_COLUMN[kh, kw]] for kh in range(4) for kw in range(4)], dim=3
                ).view(p, c, o, 4, 4).to(w_dtype)
            if ctx.needs_input_grad[2]:
                grad_bias = grad_out.view(p, rows * 4, o).sum(1, dtype=b_dtype)
        return grad_h, grad_weight, grad_bias, None


def _deconv4x4_s2(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """4x4 transposed conv, stride 2, padding 1: ``h (P,N,H,W,C) -> (P,N,2H,2W,O)``; weight (P,C,O,4,4).

    Output ``(2m+a, 2n+b)`` = sum over the input window rows ``m-1+a+r``, columns
    ``n-1+b+s`` (r, s in {0, 1}) through kernel tap ``(3-a-2r, 3-b-2s)``
    (see :class:`_Deconv4x4S2`).
    """
    return _Deconv4x4S2.apply(h, weight, bias, _compute_dtype(h))


class _Col2Im(torch.autograd.Function):
    """``F.fold(cols, (H, W), kernel_size=4, stride=2, padding=1)`` with a gather-based backward.

    F.fold's own backward is ``im2col``, which on CUDA launches one kernel per
    image (P*N launches per step); the gradient of a sum over taps is a
    gather, done here with one strided view and one copy.
    """

    @staticmethod
    def forward(ctx, cols, height, width):
        return F.fold(cols, (height, width), kernel_size=4, stride=2, padding=1)

    @staticmethod
    def backward(ctx, grad):
        b, o = grad.shape[:2]
        padded = F.pad(grad, (1, 1, 1, 1))
        patches = padded.unfold(2, 4, 2).unfold(3, 4, 2)  # (B, O, H/2, W/2, 4, 4)
        grad_cols = patches.permute(0, 1, 4, 5, 2, 3).reshape(b, o * 16, -1)
        return grad_cols, None, None


def _deconv4x4_s2_fold(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same transposed conv as a GEMM into per-tap columns summed by ``F.fold`` (col2im).

    The columns hold ``16 * C_out`` values per input pixel where the window
    form gathers ``16 * C_in``, so this form moves less memory when
    ``C_out < C_in`` (the decoder's 64 -> 32 and its last 32 -> C layer).
    Returns a channels-last view ``(P, N, 2H, 2W, O)``.
    """
    p, n, height, width, c = h.shape
    o = weight.shape[2]
    cols = torch.bmm(h.reshape(p, n * height * width, c), weight.reshape(p, c, o * 16))  # columns [o][kh][kw]
    cols = cols.view(p * n, height * width, o * 16).transpose(1, 2)
    out = _Col2Im.apply(cols, 2 * height, 2 * width)  # (P*N, O, 2H, 2W)
    out = out.view(p, n, o, 2 * height, 2 * width) + bias.to(out.dtype).view(p, 1, o, 1, 1)
    return out.permute(0, 1, 3, 4, 2)


def _dense(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``h (P, N, I) @ weight (P, O, I)^T + bias (P, O)``."""
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


def _accessors(params: dict[str, torch.Tensor], prefix: str):
    """``(weight(name), bias(name))`` lookups of one network's stacked parameters."""
    return (lambda name: params[prefix + name + ".weight"]), (lambda name: params[prefix + name + ".bias"])


def encoder_head(params: dict[str, torch.Tensor], h: torch.Tensor, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's dense layers: ``h (P, N, 1024)`` (the module's NCHW flatten order) -> ``(mean, logvar)``."""
    w, b = _accessors(params, prefix)
    h = torch.relu(_dense(h, w(_ENCODER_DENSE), b(_ENCODER_DENSE)))
    return _dense(h, w(ConvEncoder.MEAN_LAYER), b(ConvEncoder.MEAN_LAYER)), _dense(h, w(ConvEncoder.LOGVAR_LAYER), b(ConvEncoder.LOGVAR_LAYER))


def decoder_head(params: dict[str, torch.Tensor], z: torch.Tensor, prefix: str) -> torch.Tensor:
    """The decoder's dense layers: ``z (P, N, d)`` -> ``(P, N, 1024)``, the module's ``(64, 4, 4)`` NCHW features."""
    w, b = _accessors(params, prefix)
    h = torch.relu(_dense(z, w(_DECODER_DENSE[0]), b(_DECODER_DENSE[0])))
    return torch.relu(_dense(h, w(_DECODER_DENSE[1]), b(_DECODER_DENSE[1])))


def encode(params: dict[str, torch.Tensor], x: torch.Tensor, prefix: str = "encoder.") -> tuple[torch.Tensor, torch.Tensor]:
    """``ConvEncoder`` of P stacked models: ``x (P, N, C, 64, 64) -> (mean, logvar)``, each ``(P, N, d)``."""
    w, b = _accessors(params, prefix)
    p, n = x.shape[:2]
    h = x.permute(0, 1, 3, 4, 2)  # (P, N, H, W, C)
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        # the first GEMM would cast its gathered patches anyway; casting first moves half the bytes
        h = h.to(torch.get_autocast_dtype(x.device.type))
    h = torch.relu(_conv4x4_s2(h, w(_ENCODER_CONVS[0]), b(_ENCODER_CONVS[0])))
    h = torch.relu(_conv4x4_s2(h, w(_ENCODER_CONVS[1]), b(_ENCODER_CONVS[1])))
    h = torch.relu(_conv2x2_s2(h, w(_ENCODER_CONVS[2]), b(_ENCODER_CONVS[2])))
    h = torch.relu(_conv2x2_s2(h, w(_ENCODER_CONVS[3]), b(_ENCODER_CONVS[3])))
    h = h.permute(0, 1, 4, 2, 3).reshape(p, n, -1)  # flatten in the module's NCHW order
    return encoder_head(params, h, prefix)


def decode(params: dict[str, torch.Tensor], z: torch.Tensor, prefix: str = "decoder.") -> torch.Tensor:
    """``DeconvDecoder`` of P stacked models: ``z (P, N, d) -> logits (P, N, C, 64, 64)`` (a channels-last view)."""
    w, b = _accessors(params, prefix)
    p, n = z.shape[:2]
    h = decoder_head(params, z, prefix).view(p, n, 64, 4, 4).permute(0, 1, 3, 4, 2)  # the module's (64, 4, 4) NCHW meaning, as NHWC
    for k, name in enumerate(_DECODER_DECONVS):
        weight = w(name)
        deconv = _deconv4x4_s2_fold if weight.shape[2] < weight.shape[1] else _deconv4x4_s2
        h = deconv(h, weight, b(name))
        if k < len(_DECODER_DECONVS) - 1:
            h = torch.relu(h)
    return h.permute(0, 1, 4, 2, 3)
