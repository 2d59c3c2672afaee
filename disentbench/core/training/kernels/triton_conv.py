"""The study's conv encoder and deconv decoder for P stacked models, as fused Triton kernels.

The fourth formulation of the packed trainer's encoder/decoder (next to
``vmap``, ``bmm`` (:mod:`disentbench.core.training.packed.bmm`) and ``grouped``; see
:class:`~disentbench.core.training.packed.trainer.SpeedOptions`). The layers are memory-bound
(their GEMMs have K and N of at most a few hundred); a profile of ``bmm`` on
an H200 put about 30% of GPU time in strided copies around the GEMMs
(padding, space-to-depth, interleaving, gradient scatter-back), 10% in
col2im and 7% in separate ReLU kernels, against 35% in the GEMMs. Here each
convolution (forward, input gradient, weight gradient) is one kernel that
gathers its operands straight from the activations (overlapping patches are
re-read through the caches, not copied) and writes its result once, with
bias and ReLU in its epilogue and the ReLU backward in its loads.

Status: tested against torch in Triton's CPU interpreter (values and
gradients, tests/test_packed_triton.py, in CI) and on an H200 with Triton
3.6 (2026-11-28: packed training equal to one-by-one training to 1.6e-6 in
fp32; 8,625 model-steps/s for 512 beta-VAEs in bf16, the fastest
formulation measured; benchmarks/README.md). The fused loss, the chain
masks and the window form came after that measurement and have run only in
the interpreter and through the sm_90 compiler.

Layout. Every model's activations are NHWC, ``(P, N, H, W, C)``; the model
index is a grid axis of every kernel. Inputs are read through their strides
(any layout: the encoder reads the ``(P, N, C, 64, 64)`` batch directly, the
decoder's first transposed convolution reads the dense layer's output in the
module's NCHW order), outputs are written contiguous. Offsets inside one
model are int32, the model offset int64.

Kernels (``M`` = output rows ``(n, y, x)`` of one model, tiles of
``BLOCK_M x BLOCK_N`` outputs, the reduction in ``BLOCK_K`` chunks):

1. :func:`_conv_kernel`, an implicit-GEMM convolution:
   ``out[p, n, oy, ox, o] = act(bias[o] + sum_{kh,kw,c} in[p, n, S*oy+kh-PAD, S*ox+kw-PAD, c] *
   Wk[p, (kh,kw,c), o])``. The ``(BLOCK_M, BLOCK_K)`` tile of the patch matrix
   is gathered with masked loads (padding reads as 0: no padded copy). When
   ``BLOCK_K`` divides C every chunk lies in one kernel tap (contiguous
   channels); otherwise (C = 1 or 3 in the first layer: K = 16C) the chunk
   spans taps and ``K`` is padded to a multiple of ``BLOCK_K`` by the load
   masks (``tl.dot`` needs K >= 16).
2. :func:`_conv_transpose_kernel`, the transposed convolution in gather form:
   ``out[p, n, y, x, o] = act(bias[o] + sum in[p, n, iy, ix, c] * Wt[p, (kh,kw,c), o])`` over the
   taps with ``y = S*iy - PAD + kh`` (same for x). It is split by *output phase*
   ``(y mod S, x mod S)`` (one phase per program, a grid axis): in phase ``a``
   exactly the taps ``kh = (a+PAD) mod S + S*r`` contribute, from input row
   ``iy = y//S + (a+PAD)//S - r``, so the reduction is ``(KH/S)*(KW/S)*C`` long
   with no lane wasted on a tap that does not hit (masking them instead would
   waste ``1 - 1/S^2`` of the reduction). Needs S | KH, KW and S | the output size.
   With :data:`TUNING`'s ``WINDOW`` the transposed conv runs instead on kernel 1
   in its *window form*: a program computes every output phase of its rows
   ``(n, qy, qx)`` at once, as a stride-1 conv over the input window the
   phases share (rows ``qy-1..qy+1`` and the same columns for 4x4, stride 2,
   padding 1: 9 input pixels per 2x2 outputs, where the phase split reads
   16) against a ``(window*window*C, S*S*O)`` weight that holds each tap
   where a window cell meets it in a phase and 0 elsewhere
   (:func:`_window_rows`), storing column ``(a, b, o)`` at output pixel
   ``(S*qy + a, S*qx + b)``. It makes 9/4 the products, zeros included.
3. :func:`_wgrad_kernel`, a weight gradient:
   ``dW[p, (kh,kw,c), o] = sum_m A_col[p, m, (kh,kw,c)] * B[p, m, o]`` with ``A_col``
   gathered from A in conv geometry (as in kernel 1) and B the ``(P, N, OH, OW, O)``
   row matrix (either optionally masked). The long reduction over M (up to N * 32 * 32 rows) is split into
   chunks of ``ROWS`` rows, one per program, into a float32 partial buffer
   ``(P, splits, K, O)`` that torch sums (deterministic: no atomics). The
   programs of the first K block also sum the B tiles: the bias gradient.
4. :func:`_colsum_kernel`: the bias gradient of a transposed convolution
   (per-channel sums of its masked output gradient), split over rows likewise.
5. :func:`_adam_kernel` (:func:`adam_step_`): one Adam step of a stacked
   float32 parameter, each model with its own lr, betas, eps and step count;
   torch.optim.Adam's operations in its order, IEEE-rounded, reading and
   writing each tensor once (torch's elementwise Adam makes about nine
   passes). The packed trainer's ``StackedAdam`` uses it in the ``triton``
   formulation.
6. :func:`_bernoulli_nll_kernel` and 7. :func:`_bernoulli_nll_backward_kernel`
   (:func:`bernoulli_nll_per_sample`): the models' Bernoulli reconstruction
   loss, per-sample sums of the sigmoid cross-entropy in float32 (one program
   per sample) and its gradient ``(sigmoid(l) - x) * g``, each one pass over
   the logits, read and written in their own layout and dtype. An
   ``autograd.Function`` with a vmap rule, so the packed trainer's vmapped
   per-run loss launches each once for the whole pack; used only where
   :mod:`disentbench.core.nets.fused` switches it on.

Every kernel can *mask* a gathered operand (kernel 3 either one) by a
tensor of the operand's shape: an element is replaced by 0 where the mask is
``<= 0`` (as torch's ReLU backward, ``threshold_backward(grad, out, 0)``), so
the ReLU backward is fused into the loads of the gradient. Kernels 1 and 2 fuse the bias and the ReLU into their
epilogue (``relu(v) = where(v < 0, 0, v)``, which keeps NaNs as ``torch.relu`` does).

Layers -> kernels. Each fused layer is an autograd Function (:class:`_Conv2d`,
:class:`_ConvTranspose2d`) that returns the post-ReLU output, saves input,
weight and output (the output is the ReLU mask), and has a hand-written backward:

* conv forward: kernel 1 (bias, ReLU). Backward: the gradient of the
  pre-activation is ``grad * (out > 0)``; dgrad = kernel 2 on ``grad`` with
  ``mask=out`` and the weight as ``(kh, kw, o) x c``; wgrad and bias gradient =
  kernel 3 with A = the layer input, B = ``grad`` masked by ``out``.
* transposed conv forward: kernel 2 (bias, ReLU except the decoder's last
  layer). Backward: dgrad = kernel 1 on ``grad`` (``mask=out`` where the layer
  has a ReLU) with the weight as ``(kh, kw, c_out) x c_in``; wgrad = kernel 3
  with A = ``grad`` (masked) gathered in conv geometry and B = the layer input
  (its rows are the input pixels), giving ``dW`` as ``(kh, kw, c_out) x c_in``,
  permuted to ``(C_in, C_out, kh, kw)``; bias gradient = kernel 4.
* inside :func:`encode` and :func:`decode` (:data:`CHAIN_MASKS`) a layer whose
  input is the ReLU output of the fused layer below writes its input gradient
  already masked (an output mask in kernel 1's or 2's epilogue), and that layer's
  backward kernels then load their output gradient without the mask: one
  masked write instead of up to three masked reads.
* dense layers stay torch (``baddbmm`` + ``torch.relu``), as in ``bmm``.

Weights are rearranged (and cast to the compute dtype) by a small torch copy
per call; parameter names and layouts are the modules' (see
:mod:`disentbench.core.training.packed.bmm`), so parameters, checkpoints and Adam state
are shared with the other formulations.

Precision. The compute dtype is autocast's where autocast is on (bfloat16
in the packed trainer), else the layer input's dtype (``_compute_dtype`` of
``packed_conv``). Activations are converted to it in registers as they are
loaded (no cast copies), weights by their rearranging copy; products are
accumulated in float32 (``tl.dot``), bias and ReLU applied in float32, and
the output stored in the compute dtype. float32 inputs use
``input_precision="tf32"`` when ``torch.backends.cuda.matmul.allow_tf32`` is set,
else ``"ieee"``. float64 inputs accumulate in float64 by a broadcast
multiply-and-sum instead of ``tl.dot`` (a correctness path for tests, not
fast). Gradients are returned in the dtypes of the inputs, weights and biases.

Block sizes (:func:`_config`; override any of them through :data:`TUNING`):
``BLOCK_N`` = the output channels rounded up to a power of two, at least 16 and
at most 128 (so a program computes all channels of its rows and each input
tile is read by one program); ``BLOCK_K``, where the dots run on tensor
cores (16-bit floats, or float32 with TF32 allowed), = 64 for convolutions
and weight gradients and 128 for transposed convolutions (chunks spanning
several kernel taps), at most the reduction length rounded up to a power of
two (16 for a 1-channel input); for IEEE float32 (FMA dots, where such tiles
spill up to 12 KiB per thread on sm_90) 32 where 32 divides the gathered
channels (one-tap chunks), else 16; ``BLOCK_M`` = 128 when a
model has at least 8192 output rows (per phase for kernel 2) and the gathered
operand is not masked, else 64; weight gradients reduce chunks
of ``ROWS`` = 4096 rows (``BLOCK_M`` 64 per step, 32 for IEEE float32, whose
64-row tiles spill 600 B; ``BLOCK_K`` as above, ``BLOCK_N`` as above but at
most 64); 4 warps. float64 uses 32 x 16 tiles. (``benchmarks/triton_compile_check.py``
prints registers and spills of every launch as Triton's launcher specializes
it; with these sizes none spills.)
The ``BLOCK_K`` values are measured choices: an H200 sweep of launch settings
(``benchmarks/packed_layers.py --sweep``, bf16, 512 models) found that only
the reduction chunk mattered (warps, stages, ``BLOCK_M``, ``ROWS`` and the
transposed conv's launch order moved the layers' time by 0-7%), and training
with these chunks ran at 8,625 model-steps/s against 5,207 with the earlier
one-tap chunks of 32 channels (``benchmarks/README.md``). The other sizes are
the heuristic's.

Launches depend only on shapes and dtypes (no autotuning, no host
synchronisation, no index tensors), so the computation can be captured in a
CUDA graph. Triton is imported when this module is imported, but its absence
only makes :func:`available` say why the path cannot run. Triton's CPU
interpreter runs the kernels on CPU tensors when ``TRITON_INTERPRET=1`` is set
before this module is imported (the tests do). The interpreter holds bfloat16
as raw 16-bit integers, so its ``tl.dot`` and comparisons on bfloat16 are
wrong; the kernels therefore convert every loaded tile before using it
(``_gather``: rounded to the compute dtype ``IN_T``, then converted to the
product dtype ``DOT_T``). ``DOT_T`` is the compute dtype, except that under
the interpreter bfloat16/float16 tiles are multiplied as float32, which gives
the same products (those of 16-bit floats are exact in float32) as the GPU's
tensor cores with float32 accumulation, up to summation order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from disentbench.core.nets.conv import ConvEncoder, DeconvDecoder
from disentbench.core.training.kernels.tuning import (  # noqa: F401 - re-exported: benchmarks use them from here
    TUNING_KEYS,
    TUNING_KINDS,
    tuning_from_json,
    tuning_key,
    tuning_key_text,
    tuning_to_json,
)
from disentbench.core.training.packed.bmm import (
    _DECODER_DECONVS,
    _ENCODER_CONVS,
    _accessors,
    _compute_dtype,
    decoder_head,
    encoder_head,
)

try:  # Triton is optional: without it only available() works
    import triton
    import triton.language as tl
except ImportError as error:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    _IMPORT_ERROR: str | None = f"triton is not installed ({error})"
else:
    _IMPORT_ERROR = None

#: Block-size overrides for a GPU sweep. Keys: a kernel kind (``"conv"``,
#: ``"conv_transpose"``, ``"wgrad"``, ``"colsum"``) or, more specific,
#: ``(kind, gathered channels, output channels, kernel size, stride)``; values:
#: dicts with any of ``BLOCK_M``, ``BLOCK_N``, ``BLOCK_K``, ``ROWS`` (wgrad/colsum
#: rows per program), ``PHASE_INNER`` (conv_transpose: 1 launches a row block's
#: phases next to each other), ``WINDOW`` (conv_transpose: 1 computes all output
#: phases of a row block in one program from its input window, see
#: :func:`_window_rows`), ``num_warps``, ``num_stages``. :func:`tuning_from_json`
#: and :func:`tuning_to_json` convert it to and from JSON. For ``conv`` (used by conv
#: forward and transposed-conv dgrad) and ``conv_transpose`` (transposed-conv
#: forward and conv dgrad) the gathered channels are the kernel's input
#: channels; for ``wgrad`` they are A's channels and the output channels B's.
TUNING: dict = {}
#: :func:`encode` and :func:`decode` apply each ReLU backward where the gradient is written, not where it is read
#: (``mask_input_grad``/``grad_premasked`` of :func:`conv2d`); False restores the masked loads (an A/B switch for
#: benchmarks: the same numbers either way).
CHAIN_MASKS = True


@contextlib.contextmanager
def tuned(tuning: dict | None) -> Iterator[None]:
    """Launch with ``tuning`` (a :data:`TUNING` dict, checked: :func:`tuning_from_json` makes one) instead of
    :data:`TUNING`'s contents inside the block; None keeps :data:`TUNING`. The dict itself is swapped, not a
    context variable, because autograd runs CUDA backward kernels on its own device threads; the packed trainer
    enters this around each step's compute (and its CUDA graph capture), so one process trains one tuning at a
    time."""
    if tuning is None:
        yield
        return
    saved = dict(TUNING)
    TUNING.clear()
    TUNING.update(tuning)
    try:
        yield
    finally:
        TUNING.clear()
        TUNING.update(saved)


#: The study's encoder convolutions: (kernel size, stride, padding).
_ENCODER_GEOMETRY = ConvEncoder.CONV_GEOMETRY
#: The decoder's transposed convolutions: (kernel size, stride, padding).
_DECODER_GEOMETRY = DeconvDecoder.DECONV_GEOMETRY


# =============================================================================
# Kernels
# =============================================================================

if triton is not None:

    @triton.jit
    def _gather(ptr, sn, sh, sw, sc, mptr, msn, msh, msw, msc, n, y, x, c, ok,
                HAS_MASK: tl.constexpr, IN_T: tl.constexpr, DOT_T: tl.constexpr):
        """``ptr[n, y, x, c]`` where ``ok`` (else 0), rounded to IN_T, as DOT_T; with a mask, 0 where ``mask <= 0``.

        The index tensors broadcast against each other (row and column vectors
        give a tile). Loaded values are converted before any arithmetic (see the
        module docstring on the interpreter and bfloat16); IN_T is the compute
        dtype and DOT_T the operand dtype of the products (the same, except for
        16-bit floats under the interpreter).
        """
        v = tl.load(ptr + (n * sn + y * sh + x * sw + c * sc), mask=ok, other=0.0).to(IN_T).to(DOT_T)
        if HAS_MASK:
            r = tl.load(mptr + (n * msn + y * msh + x * msw + c * msc), mask=ok, other=0.0)
            if IN_T == tl.float64:
                v = tl.where(r.to(tl.float64) <= 0, 0.0, v).to(DOT_T)
            else:
                v = tl.where(r.to(tl.float32) <= 0, 0.0, v).to(DOT_T)
        return v

    @triton.jit
    def _mma(acc, a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
        """``acc + a @ b``: tensor cores, or (float64) a broadcast multiply-and-sum.

        PRECISION is ``"tf32"`` or ``"ieee"`` for float32 operands and ``""`` for
        16-bit ones (whose products do not depend on it: no keyword is passed).
        """
        if USE_DOT:
            if PRECISION == "":
                acc = tl.dot(a, b, acc=acc)
            else:
                acc = tl.dot(a, b, acc=acc, input_precision=PRECISION)
        else:
            acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
        return acc

    @triton.jit
    def _epilogue(acc, b_ptr, p, rn, O: tl.constexpr, OC: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
        """Bias (``b[p, rn % OC]``, OC = O but in the window form) and ReLU on the float32 accumulator."""
        if HAS_BIAS:
            acc += tl.load(b_ptr + p * OC + rn % OC, mask=rn < O, other=0.0).to(acc.dtype)[None, :]
        if RELU:
            acc = tl.where(acc < 0, 0.0, acc)  # keeps NaN, as torch.relu
        return acc

    @triton.jit
    def _output_mask(acc, om_ptr, offs, ok, OUT_MASK: tl.constexpr):
        """With OUT_MASK, 0 where the (output-shaped, contiguous) mask is ``<= 0``: the ReLU backward of the
        layer below, applied where this input gradient is written instead of where it is read (see
        :func:`conv2d`'s ``mask_input_grad``)."""
        if OUT_MASK:
            r = tl.load(om_ptr + offs, mask=ok, other=0.0)
            acc = tl.where(r.to(tl.float32) <= 0, 0.0, acc)
        return acc

    @triton.jit
    def _conv_kernel(
        x_ptr, m_ptr, w_ptr, b_ptr, y_ptr, om_ptr, M,
        sxp, sxn, sxh, sxw, sxc, smp, smn, smh, smw, smc,
        IH: tl.constexpr, IW: tl.constexpr, C: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, O: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr,
        HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, OUT_MASK: tl.constexpr,
        IN_T: tl.constexpr, DOT_T: tl.constexpr, ACC_T: tl.constexpr, PRECISION: tl.constexpr, USE_DOT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PH: tl.constexpr, OC: tl.constexpr,
    ):  # fmt: skip
        """Kernel 1: implicit-GEMM conv. x (P,N,IH,IW,C) strided, w (P, KH*KW*C, O), y (P,N,OH,OW,O) contiguous.

        Grid: (cdiv(M, BLOCK_M), cdiv(O, BLOCK_N), P), M = N*OH*OW. With ``PH > 1``
        (the window form of a transposed conv) the O = PH*PH*OC columns are
        ``(a, b, oc)`` and column ``(a, b, oc)`` of row ``(n, oy, ox)`` is stored
        at ``y[n, PH*oy + a, PH*ox + b, oc]`` of a (P, N, PH*OH, PH*OW, OC) output,
        the bias indexed by ``oc``.
        """
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        p = tl.program_id(2).to(tl.int64)
        K = KH * KW * C
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rm < M
        n = rm // (OH * OW)
        oy = (rm // OW) % OH
        ox = rm % OW
        x_base = x_ptr + p * sxp
        m_base = m_ptr + p * smp
        w_base = w_ptr + p * (K * O)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_T)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            if C % BLOCK_K == 0:  # one kernel tap, BLOCK_K contiguous channels
                tap = k0 // C
                iy = (oy * S + tap // KW - PAD)[:, None]
                ix = (ox * S + tap % KW - PAD)[:, None]
                c = (k0 % C + tl.arange(0, BLOCK_K))[None, :]
                ok = row_ok[:, None]
            else:
                iy = oy[:, None] * S + (rk // (KW * C))[None, :] - PAD
                ix = ox[:, None] * S + ((rk // C) % KW)[None, :] - PAD
                c = (rk % C)[None, :]
                ok = row_ok[:, None] & (rk < K)[None, :]
            ok = ok & (iy >= 0) & (iy < IH) & (ix >= 0) & (ix < IW)
            a = _gather(x_base, sxn, sxh, sxw, sxc, m_base, smn, smh, smw, smc,
                        n[:, None], iy, ix, c, ok, HAS_MASK, IN_T, DOT_T)  # fmt: skip
            w = tl.load(w_base + rk[:, None] * O + rn[None, :], mask=(rk < K)[:, None] & (rn < O)[None, :], other=0.0)
            acc = _mma(acc, a, w.to(DOT_T), USE_DOT, PRECISION)
        if PH == 1:
            acc = _epilogue(acc, b_ptr, p, rn, O, O, HAS_BIAS, RELU)
            y_offs = p * M * O + rm[:, None] * O + rn[None, :]
        else:
            acc = _epilogue(acc, b_ptr, p, rn, O, OC, HAS_BIAS, RELU)
            ph_a = rn // (PH * OC)
            ph_b = (rn // OC) % PH
            y_row = (n * (OH * PH) + oy * PH)[:, None] + ph_a[None, :]
            y_col = (ox * PH)[:, None] + ph_b[None, :]
            y_offs = p * M * O + (y_row * (OW * PH) + y_col) * OC + (rn % OC)[None, :]
        y_ok = row_ok[:, None] & (rn < O)[None, :]
        acc = _output_mask(acc, om_ptr, y_offs, y_ok, OUT_MASK)
        tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=y_ok)

    @triton.jit
    def _conv_transpose_kernel(
        x_ptr, m_ptr, w_ptr, b_ptr, y_ptr, om_ptr, MQ,
        sxp, sxn, sxh, sxw, sxc, smp, smn, smh, smw, smc,
        IH: tl.constexpr, IW: tl.constexpr, C: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, O: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr,
        HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, OUT_MASK: tl.constexpr,
        IN_T: tl.constexpr, DOT_T: tl.constexpr, ACC_T: tl.constexpr, PRECISION: tl.constexpr, USE_DOT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PHASE_INNER: tl.constexpr,
    ):  # fmt: skip
        """Kernel 2: transposed conv in gather form, one output phase per program.

        x (P,N,IH,IW,C) strided, w (P, KH*KW*C, O) rows (kh,kw,c), y (P,N,OH,OW,O)
        contiguous. Grid: (cdiv(MQ, BLOCK_M), S*S*cdiv(O, BLOCK_N), P) with
        MQ = N*(OH/S)*(OW/S) rows per phase; with PHASE_INNER, (cdiv(MQ, BLOCK_M)*S*S*cdiv(O, BLOCK_N), 1, P),
        the phases (and channel blocks) of one row block adjacent in launch order, so the input rows they
        share are read while still in L2.
        """
        NB_N = (O + BLOCK_N - 1) // BLOCK_N
        if PHASE_INNER:
            pid_m = tl.program_id(0) // (S * S * NB_N)
            pid_1 = tl.program_id(0) % (S * S * NB_N)
        else:
            pid_m = tl.program_id(0)
            pid_1 = tl.program_id(1)
        p = tl.program_id(2).to(tl.int64)
        QH = OH // S
        QW = OW // S
        RW = KW // S
        KQ = (KH // S) * RW * C
        phase = pid_1 // NB_N
        pid_n = pid_1 % NB_N
        a = phase // S  # output row y = S*qy + a
        b = phase % S
        kh0 = (a + PAD) % S  # the phase's taps: kh = kh0 + S*r, from input row iy = qy + dy - r
        kw0 = (b + PAD) % S
        dy = (a + PAD) // S
        dx = (b + PAD) // S
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rm < MQ
        n = rm // (QH * QW)
        qy = (rm // QW) % QH
        qx = rm % QW
        x_base = x_ptr + p * sxp
        m_base = m_ptr + p * smp
        w_base = w_ptr + p * (KH * KW * C * O)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_T)
        for k0 in range(0, KQ, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            if C % BLOCK_K == 0:  # one tap
                tap = k0 // C
                r = tap // RW
                s = tap % RW
                iy = (qy + dy - r)[:, None]
                ix = (qx + dx - s)[:, None]
                c = k0 % C + tl.arange(0, BLOCK_K)
                w_row = ((kh0 + S * r) * KW + kw0 + S * s) * C + c
                c = c[None, :]
                ok = row_ok[:, None]
                k_ok = rk < KQ
            else:
                r = rk // (RW * C)
                s = (rk // C) % RW
                c = rk % C
                iy = qy[:, None] + dy - r[None, :]
                ix = qx[:, None] + dx - s[None, :]
                w_row = ((kh0 + S * r) * KW + kw0 + S * s) * C + c
                c = c[None, :]
                k_ok = rk < KQ
                ok = row_ok[:, None] & k_ok[None, :]
            ok = ok & (iy >= 0) & (iy < IH) & (ix >= 0) & (ix < IW)
            xa = _gather(x_base, sxn, sxh, sxw, sxc, m_base, smn, smh, smw, smc,
                         n[:, None], iy, ix, c, ok, HAS_MASK, IN_T, DOT_T)  # fmt: skip
            w = tl.load(w_base + w_row[:, None] * O + rn[None, :], mask=k_ok[:, None] & (rn < O)[None, :], other=0.0)
            acc = _mma(acc, xa, w.to(DOT_T), USE_DOT, PRECISION)
        acc = _epilogue(acc, b_ptr, p, rn, O, O, HAS_BIAS, RELU)
        out_row = (n * OH + qy * S + a) * OW + qx * S + b
        y_offs = p * (MQ * S * S * O) + out_row[:, None] * O + rn[None, :]
        y_ok = row_ok[:, None] & (rn < O)[None, :]
        acc = _output_mask(acc, om_ptr, y_offs, y_ok, OUT_MASK)
        tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=y_ok)

    @triton.jit
    def _wgrad_kernel(
        a_ptr, am_ptr, b_ptr, bm_ptr, dw_ptr, db_ptr, M, SPLITS,
        sap, san, sah, saw, sac, samp, samn, samh, samw, samc,
        sbp, sbn, sbh, sbw, sbc, sbmp, sbmn, sbmh, sbmw, sbmc,
        IH: tl.constexpr, IW: tl.constexpr, C: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, O: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr,
        A_MASK: tl.constexpr, B_MASK: tl.constexpr, BIAS_GRAD: tl.constexpr, ROWS: tl.constexpr,
        IN_T: tl.constexpr, DOT_T: tl.constexpr, ACC_T: tl.constexpr, PRECISION: tl.constexpr, USE_DOT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """Kernel 3: partial weight gradients over one chunk of ROWS rows.

        A (P,N,IH,IW,C) gathered in conv geometry onto the rows (n, oy, ox) of
        B (P,N,OH,OW,O); both strided. dw (P, SPLITS, KH*KW*C, O) and db
        (P, SPLITS, O) partials in ACC_T. Grid: (SPLITS, cdiv(K, BLOCK_K)*cdiv(O, BLOCK_N), P).
        """
        split = tl.program_id(0)
        tile = tl.program_id(1)
        p = tl.program_id(2).to(tl.int64)
        K = KH * KW * C
        NB_N = (O + BLOCK_N - 1) // BLOCK_N
        pid_k = tile // NB_N
        pid_n = tile % NB_N
        k_start = pid_k * BLOCK_K
        rk = k_start + tl.arange(0, BLOCK_K)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        k_ok = rk < K
        n_ok = rn < O
        if C % BLOCK_K == 0:  # one tap: the tap is a scalar
            kh = (k_start // C) // KW
            kw = (k_start // C) % KW
            c = (k_start % C + tl.arange(0, BLOCK_K))[:, None]
        else:
            kh = (rk // (KW * C))[:, None]
            kw = ((rk // C) % KW)[:, None]
            c = (rk % C)[:, None]
        a_base = a_ptr + p * sap
        am_base = am_ptr + p * samp
        b_base = b_ptr + p * sbp
        bm_base = bm_ptr + p * sbmp
        acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=ACC_T)
        bias = tl.zeros((BLOCK_N,), dtype=ACC_T)
        for m0 in range(0, ROWS, BLOCK_M):
            rm = split * ROWS + m0 + tl.arange(0, BLOCK_M)
            row_ok = rm < M
            n = rm // (OH * OW)
            oy = (rm // OW) % OH
            ox = rm % OW
            iy = oy[None, :] * S + kh - PAD  # (BLOCK_K or 1, BLOCK_M)
            ix = ox[None, :] * S + kw - PAD
            ok = k_ok[:, None] & row_ok[None, :] & (iy >= 0) & (iy < IH) & (ix >= 0) & (ix < IW)
            at = _gather(a_base, san, sah, saw, sac, am_base, samn, samh, samw, samc,
                         n[None, :], iy, ix, c, ok, A_MASK, IN_T, DOT_T)  # fmt: skip
            bt = _gather(b_base, sbn, sbh, sbw, sbc, bm_base, sbmn, sbmh, sbmw, sbmc,
                         n[:, None], oy[:, None], ox[:, None], rn[None, :], row_ok[:, None] & n_ok[None, :],
                         B_MASK, IN_T, DOT_T)  # fmt: skip
            acc = _mma(acc, at, bt, USE_DOT, PRECISION)
            if BIAS_GRAD:
                bias += tl.sum(bt.to(ACC_T), axis=0)
        part = p * SPLITS + split
        dw_offs = part * (K * O) + rk[:, None] * O + rn[None, :]
        tl.store(dw_ptr + dw_offs, acc, mask=k_ok[:, None] & n_ok[None, :])
        if BIAS_GRAD:
            if pid_k == 0:
                tl.store(db_ptr + part * O + rn, bias, mask=n_ok)

    @triton.jit
    def _colsum_kernel(
        g_ptr, m_ptr, out_ptr, M, SPLITS,
        sgp, sgn, sgh, sgw, sgc, smp, smn, smh, smw, smc,
        H: tl.constexpr, W: tl.constexpr, O: tl.constexpr, HAS_MASK: tl.constexpr, ROWS: tl.constexpr,
        ACC_T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """Kernel 4: partial per-channel sums of g (P,N,H,W,O) (masked) over one chunk of rows.

        out (P, SPLITS, O) in ACC_T. Grid: (SPLITS, cdiv(O, BLOCK_N), P).
        """
        split = tl.program_id(0)
        pid_n = tl.program_id(1)
        p = tl.program_id(2).to(tl.int64)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < O
        g_base = g_ptr + p * sgp
        m_base = m_ptr + p * smp
        total = tl.zeros((BLOCK_N,), dtype=ACC_T)
        for m0 in range(0, ROWS, BLOCK_M):
            rm = split * ROWS + m0 + tl.arange(0, BLOCK_M)
            row_ok = rm < M
            n = (rm // (H * W))[:, None]
            y = ((rm // W) % H)[:, None]
            x = (rm % W)[:, None]
            v = _gather(g_base, sgn, sgh, sgw, sgc, m_base, smn, smh, smw, smc,
                        n, y, x, rn[None, :], row_ok[:, None] & n_ok[None, :], HAS_MASK, ACC_T, ACC_T)  # fmt: skip
            total += tl.sum(v, axis=0)
        tl.store(out_ptr + (p * SPLITS + split) * O + rn, total, mask=n_ok)


if triton is not None:

    @triton.jit
    def _adam_kernel(p_ptr, g_ptr, m_ptr, v_ptr, s_ptr, NUMEL, BLOCK: tl.constexpr):
        """Kernel 5: one Adam step of every model's slice of one stacked float32 parameter.

        ``s (P, 6)``: ``1 - beta1, beta2, 1 - beta2, eps, sqrt(bias_correction2),
        -lr / bias_correction1`` per model. torch.optim.Adam's operations in its
        order, IEEE-rounded (``sqrt_rn``, ``div_rn``), reading and writing each
        tensor once. Grid: (cdiv(NUMEL, BLOCK), P), NUMEL = one model's elements.
        """
        model = tl.program_id(1).to(tl.int64)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < NUMEL
        base = model * NUMEL
        s = s_ptr + model * 6
        one_minus_beta1 = tl.load(s)
        beta2 = tl.load(s + 1)
        one_minus_beta2 = tl.load(s + 2)
        eps = tl.load(s + 3)
        bias_correction2_sqrt = tl.load(s + 4)
        negative_step_size = tl.load(s + 5)
        g = tl.load(g_ptr + base + offs, mask=ok, other=0.0)
        m = tl.load(m_ptr + base + offs, mask=ok, other=0.0)
        v = tl.load(v_ptr + base + offs, mask=ok, other=0.0)
        p = tl.load(p_ptr + base + offs, mask=ok, other=0.0)
        m = m + one_minus_beta1 * (g - m)  # torch's lerp for weights below 0.5
        v = v * beta2 + (g * one_minus_beta2) * g
        denom = tl.div_rn(tl.sqrt_rn(v), bias_correction2_sqrt) + eps
        p = p + tl.div_rn(m * negative_step_size, denom)
        tl.store(m_ptr + base + offs, m, mask=ok)
        tl.store(v_ptr + base + offs, v, mask=ok)
        tl.store(p_ptr + base + offs, p, mask=ok)


if triton is not None:

    @triton.jit
    def _bernoulli_nll_kernel(l_ptr, t_ptr, out_ptr, L, HW, slr, slc, slhw, str_, stc, sthw,
                              L_T: tl.constexpr, T_T: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        """Kernel 6: one sample's ``sum_e max(l, 0) - l*t + log(1 + exp(-|l|))`` (sigmoid cross-entropy) in float32.

        Logits and targets are ``(R, C, HW)`` through strides, L = C*HW elements per
        sample. Grid: (R,); one program sums one sample (deterministic).
        """
        row = tl.program_id(0).to(tl.int64)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for e0 in range(0, L, BLOCK):
            e = e0 + tl.arange(0, BLOCK)
            ok = e < L
            c = e // HW
            hw = e % HW
            v = tl.load(l_ptr + row * slr + c * slc + hw * slhw, mask=ok, other=0.0).to(L_T).to(tl.float32)
            t = tl.load(t_ptr + row * str_ + c * stc + hw * sthw, mask=ok, other=0.0).to(T_T).to(tl.float32)
            term = tl.where(v > 0, v, 0.0) - v * t + tl.log(1.0 + tl.exp(-tl.abs(v)))
            acc += tl.where(ok, term, 0.0)
        tl.store(out_ptr + row, tl.sum(acc, axis=0))

    @triton.jit
    def _bernoulli_nll_backward_kernel(l_ptr, t_ptr, g_ptr, d_ptr, L, HW, slr, slc, slhw, str_, stc, sthw, sg,
                                       L_T: tl.constexpr, T_T: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        """Kernel 7: ``d = (sigmoid(l) - t) * g[row]`` in float32, stored in the logits' dtype and layout.

        Grid: (R, cdiv(L, BLOCK)).
        """
        row = tl.program_id(0).to(tl.int64)
        e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = e < L
        c = e // HW
        hw = e % HW
        offs = row * slr + c * slc + hw * slhw
        v = tl.load(l_ptr + offs, mask=ok, other=0.0).to(L_T).to(tl.float32)
        t = tl.load(t_ptr + row * str_ + c * stc + hw * sthw, mask=ok, other=0.0).to(T_T).to(tl.float32)
        g = tl.load(g_ptr + row * sg).to(tl.float32)
        d = (1.0 / (1.0 + tl.exp(-v)) - t) * g
        tl.store(d_ptr + offs, d.to(d_ptr.dtype.element_ty), mask=ok)


def _interpreted() -> bool:
    return triton is not None and type(_conv_kernel).__name__ == "InterpretedFunction"


def available(device: torch.device | str | None = None) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (any device if None); None if they can.

    They need Triton and either a CUDA device or Triton's CPU interpreter
    (``TRITON_INTERPRET=1`` set before this module was imported).
    """
    if triton is None:
        return _IMPORT_ERROR
    if _interpreted():
        return None
    kind = torch.device(device).type if device is not None else "cuda"
    if kind != "cuda":
        return f"Triton kernels run on CUDA devices (or under TRITON_INTERPRET=1), not on {kind!r}"
    if not torch.cuda.is_available():
        return "no CUDA device is available (and TRITON_INTERPRET=1 was not set before import)"
    return None


def _require(t: torch.Tensor) -> None:
    reason = available(t.device)
    if reason is not None:
        raise RuntimeError(f"the Triton formulation cannot run: {reason}")


# =============================================================================
# Launch helpers
# =============================================================================


#: Reduction chunk per kernel kind (capped at the reduction length): the 2026-11-28 H200 sweep's choice
#: (bf16, 512 models: 8,625 model-steps/s against 5,207 with one-tap chunks of 32 channels).
_BLOCK_K = {"conv": 64, "conv_transpose": 128, "wgrad": 64}


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def _window_geometry(kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """``(first, width)``: a transposed conv's output pixels ``S*q + a`` (every phase ``a``) read input rows
    ``q + first .. q + first + width - 1`` (see :func:`_window_rows`)."""
    shifts = [(a + padding) // stride for a in range(stride)]  # input row of tap r = 0 in phase a: q + shift
    first = shifts[0] - (kernel // stride - 1)
    return first, shifts[-1] - first + 1


def _tuned(kind: str, c: int, o: int, kernel: int, stride: int) -> dict:
    """:data:`TUNING`'s settings for one launch: the kind's, then the more specific shape's."""
    return {**TUNING.get(kind, {}), **TUNING.get((kind, c, o, kernel, stride), {})}


def _config(
    kind: str, c: int, o: int, kernel: int, stride: int, rows: int, dtype: torch.dtype, masked: bool = False,
    padding: int = 0,
) -> dict:  # fmt: skip
    """Block sizes and launch options of one launch (see the module docstring); :data:`TUNING` overrides."""
    tuned = _tuned(kind, c, o, kernel, stride)
    window = kind == "conv_transpose" and bool(tuned.get("WINDOW", 0))
    cap_n = 64 if kind == "wgrad" else 128
    # reduction length of one output: every tap for conv and wgrad, one phase's taps for conv_transpose,
    # the whole input window in the window form (whose columns are every phase's output channels)
    reduction = (kernel // stride) ** 2 * c if kind == "conv_transpose" else kernel * kernel * c
    cols = o
    if window:
        reduction = _window_geometry(kernel, stride, padding)[1] ** 2 * c
        cols = stride * stride * o
    cfg = {
        "BLOCK_M": 64 if kind == "wgrad" or rows < 8192 or masked else 128,
        "BLOCK_N": min(max(16, _next_pow2(cols)), cap_n),
        "BLOCK_K": 32 if c % 32 == 0 else 16,
        "ROWS": 4096,
        "num_warps": 4,
        "PHASE_INNER": 0,
        "WINDOW": int(window),
    }
    tensor_cores = dtype in (torch.bfloat16, torch.float16) or (
        dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    )
    if tensor_cores:  # measured on an H200 (benchmarks/README.md): chunks spanning several taps are faster
        cfg["BLOCK_K"] = min(_BLOCK_K.get(kind, 32), max(16, _next_pow2(reduction)))
    if window:  # not yet measured on a GPU (48-80 registers on sm_90; the sweep tries larger tiles)
        cfg["num_warps"] = 8
        if tensor_cores:
            cfg["BLOCK_K"] = min(64, cfg["BLOCK_K"])
        if cfg["BLOCK_N"] >= 128:
            cfg["BLOCK_M"] = 64
    if dtype == torch.float64:  # broadcast multiply-and-sum: keep the (M, K, N) product small
        cfg.update(BLOCK_M=32, BLOCK_K=16)
    elif kind == "wgrad" and dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        cfg.update(BLOCK_M=32)  # IEEE fp32 dots run on FMA units: 64-row tiles spill (sm_90, 600 B)
    cfg.update(tuned)
    # an override larger than the reduction or the columns would only add masked lanes
    cfg["BLOCK_K"] = min(cfg["BLOCK_K"], max(16, _next_pow2(reduction)))
    cfg["BLOCK_N"] = min(cfg["BLOCK_N"], max(16, _next_pow2(cols)))
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        if cfg[key] < 16 or cfg[key] & (cfg[key] - 1):
            raise ValueError(f"{key} must be a power of two >= 16 (tl.dot's minimum); got {cfg[key]}")
    if kind in ("wgrad", "colsum"):  # a multiple of BLOCK_M, no longer than the rows (rounded up)
        rows_per_program = min(cfg["ROWS"], rows)
        cfg["ROWS"] = -(-rows_per_program // cfg["BLOCK_M"]) * cfg["BLOCK_M"]
    return cfg


def _launch_options(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}


def _types(dtype: torch.dtype) -> dict:
    """The constexpr dtype arguments for compute dtype ``dtype``."""
    dot = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
    if dtype not in dot:
        raise TypeError(f"unsupported compute dtype {dtype}")
    in_t = dot_t = dot[dtype]
    if _interpreted() and dtype in (torch.bfloat16, torch.float16):
        dot_t = tl.float32  # the interpreter's tl.dot cannot multiply 16-bit floats (see the module docstring)
    precision = ""  # 16-bit operands (and float64, which does not use tl.dot)
    if dot_t == tl.float32:
        precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return {
        "IN_T": in_t,
        "DOT_T": dot_t,
        "ACC_T": tl.float64 if dtype == torch.float64 else tl.float32,
        "PRECISION": precision,
        "USE_DOT": dtype != torch.float64,
    }


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_offsets(*tensors: torch.Tensor) -> None:
    """Offsets inside one model are int32 in the kernels."""
    for t in tensors:
        if t is not None and sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:])) >= 2**31:
            raise ValueError(f"one model's slice of a {tuple(t.shape)} tensor is too large for int32 offsets")


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _out_mask(out_mask: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """The output mask tensor to pass (``out`` itself as a placeholder without one); it must match ``out``."""
    if out_mask is None:
        return out
    if out_mask.shape != out.shape or not out_mask.is_contiguous():
        raise ValueError(f"the output mask must be a contiguous {tuple(out.shape)} tensor; got {tuple(out_mask.shape)}")
    return out_mask


def _conv_launch(x, weight_k, bias, kernel, stride, padding, relu, mask, out_dtype, dtype, out_mask=None):
    """Kernel 1: ``x (P,N,H,W,C)`` (strided), ``weight_k (P, k*k*C, O)`` -> ``(P,N,OH,OW,O)`` of ``out_dtype``.

    ``out_mask`` (contiguous, the output's shape): outputs where it is ``<= 0`` are 0."""
    p, n, ih, iw, c = x.shape
    o = weight_k.shape[2]
    oh, ow = _out_size(ih, kernel, stride, padding), _out_size(iw, kernel, stride, padding)
    out = torch.empty((p, n, oh, ow, o), dtype=out_dtype, device=x.device)
    om_t = _out_mask(out_mask, out)
    m_t = mask if mask is not None else x
    _check_offsets(x, m_t, out)
    rows = n * oh * ow
    cfg = _config("conv", c, o, kernel, stride, rows, dtype, masked=mask is not None)
    grid = (triton.cdiv(rows, cfg["BLOCK_M"]), triton.cdiv(o, cfg["BLOCK_N"]), p)
    _conv_kernel[grid](
        x, m_t, weight_k, bias if bias is not None else weight_k, out, om_t, rows,
        *x.stride(), *m_t.stride(),
        IH=ih, IW=iw, C=c, OH=oh, OW=ow, O=o, KH=kernel, KW=kernel, S=stride, PAD=padding,
        HAS_MASK=mask is not None, HAS_BIAS=bias is not None, RELU=relu, OUT_MASK=out_mask is not None, **_types(dtype),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], PH=1, OC=o, **_launch_options(cfg),
    )  # fmt: skip
    return out


def _conv_transpose_launch(
    x, weight, bias, kernel, stride, padding, relu, mask, out_size, out_dtype, dtype, out_mask=None
):  # fmt: skip
    """A transposed conv of ``x (P,N,H,W,C)`` (strided) by ``weight (P, C, O, k, k)`` -> ``(P,N,OH,OW,O)`` of ``out_dtype``.

    Kernel 2 (one output phase per program), or with TUNING's ``WINDOW`` kernel 1
    over each output block's input window, all phases at once (:func:`_window_rows`).
    ``out_mask`` as in :func:`_conv_launch`.
    """
    p, n, ih, iw, c = x.shape
    o = weight.shape[2]
    oh, ow = out_size
    if kernel % stride or oh % stride or ow % stride:
        raise NotImplementedError("the phase-split transposed conv needs the stride to divide the kernel and output sizes")
    if _out_size(oh, kernel, stride, padding) != ih or _out_size(ow, kernel, stride, padding) != iw:
        raise ValueError(f"output size {out_size} does not match input {ih}x{iw} for kernel {kernel}, stride {stride}")
    out = torch.empty((p, n, oh, ow, o), dtype=out_dtype, device=x.device)
    om_t = _out_mask(out_mask, out)
    m_t = mask if mask is not None else x
    _check_offsets(x, m_t, out)
    rows = n * (oh // stride) * (ow // stride)
    cfg = _config("conv_transpose", c, o, kernel, stride, rows, dtype, masked=mask is not None, padding=padding)
    if cfg["WINDOW"]:
        first, width = _window_geometry(kernel, stride, padding)
        weight_w = _window_rows(weight, dtype, kernel, stride, padding)
        cols = stride * stride * o
        grid = (triton.cdiv(rows, cfg["BLOCK_M"]), triton.cdiv(cols, cfg["BLOCK_N"]), p)
        _conv_kernel[grid](
            x, m_t, weight_w, bias if bias is not None else weight_w, out, om_t, rows,
            *x.stride(), *m_t.stride(),
            IH=ih, IW=iw, C=c, OH=oh // stride, OW=ow // stride, O=cols, KH=width, KW=width, S=1, PAD=-first,
            HAS_MASK=mask is not None, HAS_BIAS=bias is not None, RELU=relu, OUT_MASK=out_mask is not None,
            **_types(dtype),
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], PH=stride, OC=o,
            **_launch_options(cfg),
        )  # fmt: skip
        return out
    weight_t = _tap_rows(weight, dtype, rows_dim=1)  # rows (kh, kw, c), columns o
    phases = stride * stride * triton.cdiv(o, cfg["BLOCK_N"])
    row_blocks = triton.cdiv(rows, cfg["BLOCK_M"])
    grid = (row_blocks * phases, 1, p) if cfg["PHASE_INNER"] else (row_blocks, phases, p)
    _conv_transpose_kernel[grid](
        x, m_t, weight_t, bias if bias is not None else weight_t, out, om_t, rows,
        *x.stride(), *m_t.stride(),
        IH=ih, IW=iw, C=c, OH=oh, OW=ow, O=o, KH=kernel, KW=kernel, S=stride, PAD=padding,
        HAS_MASK=mask is not None, HAS_BIAS=bias is not None, RELU=relu, OUT_MASK=out_mask is not None,
        **_types(dtype),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], PHASE_INNER=bool(cfg["PHASE_INNER"]),
        **_launch_options(cfg),
    )  # fmt: skip
    return out


def _wgrad_launch(a, a_mask, b, b_mask, kernel, stride, padding, bias_grad, dtype):
    """Kernel 3: ``sum_m A_col[m, (kh,kw,c)] * B[m, o]`` -> ``(P, k*k*C, O)`` (and ``sum_m B[m, o]``), accumulator dtype."""
    p, n, ih, iw, c = a.shape
    _, _, oh, ow, o = b.shape
    if (oh, ow) != (_out_size(ih, kernel, stride, padding), _out_size(iw, kernel, stride, padding)):
        raise ValueError(f"rows {oh}x{ow} do not match the conv geometry of a {ih}x{iw} input")
    am_t = a_mask if a_mask is not None else a
    bm_t = b_mask if b_mask is not None else b
    _check_offsets(a, am_t, b, bm_t)
    rows = n * oh * ow
    cfg = _config("wgrad", c, o, kernel, stride, rows, dtype)
    splits = triton.cdiv(rows, cfg["ROWS"])
    k = kernel * kernel * c
    acc_dtype = _acc_dtype(dtype)
    dw = torch.empty((p, splits, k, o), dtype=acc_dtype, device=a.device)
    db = torch.empty((p, splits, o), dtype=acc_dtype, device=a.device) if bias_grad else dw
    grid = (splits, triton.cdiv(k, cfg["BLOCK_K"]) * triton.cdiv(o, cfg["BLOCK_N"]), p)
    _wgrad_kernel[grid](
        a, am_t, b, bm_t, dw, db, rows, splits,
        *a.stride(), *am_t.stride(), *b.stride(), *bm_t.stride(),
        IH=ih, IW=iw, C=c, OH=oh, OW=ow, O=o, KH=kernel, KW=kernel, S=stride, PAD=padding,
        A_MASK=a_mask is not None, B_MASK=b_mask is not None, BIAS_GRAD=bias_grad, ROWS=cfg["ROWS"], **_types(dtype),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], **_launch_options(cfg),
    )  # fmt: skip
    dw = dw[:, 0] if splits == 1 else dw.sum(1)
    if not bias_grad:
        return dw, None
    return dw, (db[:, 0] if splits == 1 else db.sum(1))


def _colsum_launch(g, mask, dtype):
    """Kernel 4: per-channel sums of ``g (P,N,H,W,O)`` where ``mask > 0`` (all of g without a mask) -> ``(P, O)``."""
    p, n, h, w, o = g.shape
    m_t = mask if mask is not None else g
    _check_offsets(g, m_t)
    rows = n * h * w
    cfg = _config("colsum", o, o, 1, 1, rows, dtype)
    splits = triton.cdiv(rows, cfg["ROWS"])
    out = torch.empty((p, splits, o), dtype=_acc_dtype(dtype), device=g.device)
    _colsum_kernel[(splits, triton.cdiv(o, cfg["BLOCK_N"]), p)](
        g, m_t, out, rows, splits, *g.stride(), *m_t.stride(),
        H=h, W=w, O=o, HAS_MASK=mask is not None, ROWS=cfg["ROWS"], ACC_T=_types(dtype)["ACC_T"],
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], **_launch_options(cfg),
    )  # fmt: skip
    return out[:, 0] if splits == 1 else out.sum(1)


# =============================================================================
# Fused layers
# =============================================================================


#: Elements of one model's slice per program of the Adam kernel.
ADAM_BLOCK = 1024


def adam_supported(param: torch.Tensor) -> bool:
    """Whether :func:`adam_step_` can update ``param`` (float32, contiguous, on a device the kernels run on)."""
    return param.dtype == torch.float32 and param.is_contiguous() and available(param.device) is None


def adam_step_(
    param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, scalars: torch.Tensor
) -> None:
    """One fused Adam step, in place, of every model's slice of a stacked float32 parameter ``(P, ...)``.

    ``scalars (P, 6)`` float32: ``1 - beta1, beta2, 1 - beta2, eps,
    sqrt(1 - beta2**step), -lr / (1 - beta1**step)`` per model (as
    :class:`~disentbench.core.training.packed.trainer.StackedAdam` computes them). One kernel
    reads parameter, gradient and both moments once and writes parameter and
    moments once, where torch's elementwise Adam makes about nine passes.
    """
    _require(param)
    tensors = (param, grad, exp_avg, exp_avg_sq)
    if any(t.dtype != torch.float32 or not t.is_contiguous() or t.shape != param.shape for t in tensors):
        raise ValueError("adam_step_ needs contiguous float32 parameter, gradient and moments of one shape")
    p = param.shape[0]
    if scalars.shape != (p, 6) or scalars.dtype != torch.float32:
        raise ValueError(f"scalars must be a ({p}, 6) float32 tensor; got {tuple(scalars.shape)} {scalars.dtype}")
    numel = param[0].numel()
    _adam_kernel[(triton.cdiv(numel, ADAM_BLOCK), p)](
        param, grad, exp_avg, exp_avg_sq, scalars.contiguous(), numel, BLOCK=ADAM_BLOCK
    )


def _tap_rows(weight: torch.Tensor, dtype: torch.dtype, rows_dim: int) -> torch.Tensor:
    """A stacked ``(P, A, B, k, k)`` kernel as ``(P, k*k*D, E)`` in ``dtype``: rows ``(kh, kw, d)`` over dim ``rows_dim``
    (1 or 2) of the kernel, columns over the other one (a small contiguous copy per call)."""
    p, k = weight.shape[0], weight.shape[3]
    order = (0, 3, 4, 2, 1) if rows_dim == 2 else (0, 3, 4, 1, 2)
    return weight.to(dtype).permute(order).reshape(p, k * k * weight.shape[rows_dim], -1).contiguous()


_WINDOW_TAPS: dict[tuple, torch.Tensor] = {}


def _window_taps(kernel: int, stride: int, padding: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(width, width, S, S)`` int64 on ``device``: the kernel tap ``kh*k + kw`` that input window cell ``(wy, wx)``
    meets in output phase ``(a, b)``, or ``k*k`` (a zero tap) where none does.

    Cached per device: the first call (an eager warm-up step) copies it there once, so no later call, and no
    CUDA graph capture, makes a host-to-device copy."""
    key = (kernel, stride, padding, str(torch.device(device)))
    if key not in _WINDOW_TAPS:
        first, width = _window_geometry(kernel, stride, padding)
        taps = torch.full((width, width, stride, stride), kernel * kernel, dtype=torch.int64)
        for a in range(stride):
            for r in range(kernel // stride):  # phase a, tap kh = (a+PAD)%S + S*r reads row q + (a+PAD)//S - r
                wy, kh = (a + padding) // stride - r - first, (a + padding) % stride + stride * r
                for b in range(stride):
                    for s in range(kernel // stride):
                        wx, kw = (b + padding) // stride - s - first, (b + padding) % stride + stride * s
                        taps[wy, wx, a, b] = kh * kernel + kw
        _WINDOW_TAPS[key] = taps.to(device)
    return _WINDOW_TAPS[key]


def _window_rows(weight: torch.Tensor, dtype: torch.dtype, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """A stacked transposed-conv kernel ``(P, C, O, k, k)`` as the window form's ``(P, width*width*C, S*S*O)`` in ``dtype``.

    The window form computes output pixels ``(S*qy + a, S*qx + b)`` of every phase
    ``(a, b)`` and channel ``o`` at once, as a stride-1 conv over the input window
    rows ``qy + first .. qy + first + width - 1`` (same for x; for the study's
    4x4, stride 2, padding 1: the 3x3 neighbours): row ``(wy, wx, c)``, column
    ``(a, b, o)`` holds the tap that window cell meets in that phase, or 0.
    Each output block reads its input window once (9 pixels per 2x2 outputs
    for the study's layers, against 16 when the phases are separate programs),
    for 9/4 the products of the phase split (zeros included).
    """
    p, c, o = weight.shape[:3]
    taps = _window_taps(kernel, stride, padding, weight.device)
    width = taps.shape[0]
    flat = torch.cat((weight.to(dtype).flatten(3), weight.new_zeros((p, c, o, 1), dtype=dtype)), dim=3)
    cells = flat[..., taps.flatten()].view(p, c, o, width, width, stride, stride)
    return cells.permute(0, 3, 4, 1, 5, 6, 2).reshape(p, width * width * c, stride * stride * o)


def _recall(ctx):
    """What :func:`_remember` kept: ``(h, weight, out, (kernel, stride, padding, relu, dtype), (h, weight, bias dtypes))``."""
    h, weight, out = ctx.saved_tensors
    return h, weight, out, ctx.geometry, ctx.dtypes


def _remember(ctx, h, weight, bias, out, kernel, stride, padding, relu, dtype, chain) -> None:
    """What a fused layer's backward needs: input, weight, the output as the ReLU mask (unless the gradient
    arrives masked), geometry, dtypes and the chain flags ``(mask_input_grad, grad_premasked)``."""
    mask_input_grad, grad_premasked = chain
    if grad_premasked and not relu:
        raise ValueError("grad_premasked needs relu: only a ReLU output's gradient can arrive masked")
    ctx.save_for_backward(h, weight, out if relu and not grad_premasked else None)
    ctx.geometry = (kernel, stride, padding, relu, dtype)
    ctx.has_bias = bias is not None
    ctx.dtypes = (h.dtype, weight.dtype, bias.dtype if bias is not None else None)
    ctx.mask_input_grad = mask_input_grad


def _input_grad_mask(ctx, h: torch.Tensor) -> torch.Tensor | None:
    """The layer input as the mask of its gradient (``mask_input_grad``), where the kernels can apply it."""
    return h if ctx.mask_input_grad and h.is_contiguous() else None


def _masked_late(ctx, h: torch.Tensor, grad_h: torch.Tensor) -> torch.Tensor:
    """``mask_input_grad`` for an input the kernels could not use as a mask (not contiguous): in torch."""
    if ctx.mask_input_grad and not h.is_contiguous():
        return grad_h.masked_fill(h <= 0, 0)
    return grad_h


class _Conv2d(torch.autograd.Function):
    """Conv (+ bias, + ReLU) of P models on NHWC tensors; weight (P, O, C, k, k). See the module docstring."""

    @staticmethod
    def forward(ctx, h, weight, bias, kernel, stride, padding, relu, dtype, chain=(False, False)):
        weight_k = _tap_rows(weight, dtype, rows_dim=2)  # rows (kh, kw, c), columns o
        out = _conv_launch(h, weight_k, bias, kernel, stride, padding, relu, None, dtype, dtype)
        _remember(ctx, h, weight, bias, out, kernel, stride, padding, relu, dtype, chain)
        return out

    @staticmethod
    def backward(ctx, grad):
        h, weight, out, (kernel, stride, padding, relu, dtype), (h_dtype, w_dtype, b_dtype) = _recall(ctx)
        p, o, c = weight.shape[:3]
        grad_h = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # the transposed conv of the masked gradient: (P, O, C, k, k) read as (P, C_in, C_out, k, k)
            grad_h = _conv_transpose_launch(
                grad, weight, None, kernel, stride, padding, False, out, h.shape[2:4], h_dtype, dtype,
                out_mask=_input_grad_mask(ctx, h),
            )  # fmt: skip
            grad_h = _masked_late(ctx, h, grad_h)
        want_bias = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] or want_bias:
            dw, db = _wgrad_launch(h, None, grad, out, kernel, stride, padding, want_bias, dtype)
            if ctx.needs_input_grad[1]:
                grad_weight = dw.view(p, kernel, kernel, c, o).permute(0, 4, 3, 1, 2).to(w_dtype)
            if want_bias:
                grad_bias = db.to(b_dtype)
        return grad_h, grad_weight, grad_bias, None, None, None, None, None, None


class _ConvTranspose2d(torch.autograd.Function):
    """Transposed conv (+ bias, + ReLU) of P models on NHWC tensors; weight (P, C_in, C_out, k, k)."""

    @staticmethod
    def forward(ctx, h, weight, bias, kernel, stride, padding, relu, dtype, chain=(False, False)):
        out_size = tuple((s - 1) * stride - 2 * padding + kernel for s in h.shape[2:4])
        out = _conv_transpose_launch(h, weight, bias, kernel, stride, padding, relu, None, out_size, dtype, dtype)
        _remember(ctx, h, weight, bias, out, kernel, stride, padding, relu, dtype, chain)
        return out

    @staticmethod
    def backward(ctx, grad):
        h, weight, out, (kernel, stride, padding, relu, dtype), (h_dtype, w_dtype, b_dtype) = _recall(ctx)
        p, c, o = weight.shape[:3]
        grad_h = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # the conv of the masked gradient: rows (kh, kw, c_out), columns c_in
            weight_k = _tap_rows(weight, dtype, rows_dim=2)
            grad_h = _conv_launch(
                grad, weight_k, None, kernel, stride, padding, False, out, h_dtype, dtype,
                out_mask=_input_grad_mask(ctx, h),
            )  # fmt: skip
            grad_h = _masked_late(ctx, h, grad_h)
        if ctx.needs_input_grad[1]:
            dw, _ = _wgrad_launch(grad, out, h, None, kernel, stride, padding, False, dtype)  # (P, (kh,kw,o), c)
            grad_weight = dw.view(p, kernel, kernel, o, c).permute(0, 4, 3, 1, 2).to(w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = _colsum_launch(grad, out, dtype).to(b_dtype)
        return grad_h, grad_weight, grad_bias, None, None, None, None, None, None


#: Elements per step of the reconstruction-loss kernels.
NLL_BLOCK = 1024
_NLL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _samples_view(t: torch.Tensor, lead: int) -> tuple[torch.Tensor, tuple[int, int, int], int]:
    """``t`` as ``(R, C, HW)`` samples through strides: ``(tensor, (row, channel, pixel) strides, HW)``.

    R is the product of the ``lead`` leading dims; the rest must be ``(C, H, W)``.
    Where the leading dims or H and W do not merge into one stride, a contiguous
    copy is read instead.
    """
    rows = t.shape[:lead]
    if t.dim() == lead + 3:
        stride = t.stride()
        lead_ok = all(stride[i] == stride[i + 1] * t.shape[i + 1] for i in range(lead - 1))
        c, h, w = t.shape[lead:]
        positive = all(st > 0 or size == 1 for st, size in zip(stride, t.shape))  # no expanded (overlapping) dims
        if lead_ok and positive and (h == 1 or stride[lead + 1] == w * stride[lead + 2]):
            return t, (stride[lead - 1], stride[lead], stride[lead + 2]), h * w
    flat = t.reshape(*rows, -1).contiguous()
    return flat, (flat.shape[-1], 0, 1), flat.shape[-1]


def _nll_check(logits: torch.Tensor, x: torch.Tensor, lead: int) -> None:
    if logits.shape != x.shape or logits.dim() != lead + 3:
        raise ValueError(f"expected logits and targets of one (..., C, H, W) shape; got {tuple(logits.shape)}, {tuple(x.shape)}")


def _nll_operands(logits: torch.Tensor, x: torch.Tensor, lead: int) -> tuple:
    """What both loss kernels take: ``(rows, logits view, x view, L, HW, logits strides, x strides, dtypes)``."""
    _nll_check(logits, x, lead)
    lt, l_strides, hw = _samples_view(logits, lead)
    tt, t_strides, _ = _samples_view(x, lead)
    rows = int(torch.Size(logits.shape[:lead]).numel())
    per_sample = logits[(0,) * lead].numel() if rows else 0
    dtypes = {"L_T": _types(logits.dtype)["IN_T"], "T_T": _types(x.dtype)["IN_T"]}
    return rows, lt, tt, per_sample, hw, l_strides, t_strides, dtypes


def _bernoulli_nll(logits: torch.Tensor, x: torch.Tensor, lead: int) -> torch.Tensor:
    """Per-sample sigmoid cross-entropy sums ``(logits.shape[:lead])`` in float32 (kernel 6)."""
    rows, lt, tt, per_sample, hw, l_strides, t_strides, dtypes = _nll_operands(logits, x, lead)
    out = torch.empty(logits.shape[:lead], dtype=torch.float32, device=logits.device)
    if rows:
        _bernoulli_nll_kernel[(rows,)](lt, tt, out, per_sample, hw, *l_strides, *t_strides, **dtypes, BLOCK=NLL_BLOCK)
    return out


def _bernoulli_nll_backward(logits: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, lead: int) -> torch.Tensor:
    """The logits' gradient ``(sigmoid(l) - x) * grad[sample]`` in the logits' dtype and layout (kernel 7)."""
    rows, lt, tt, per_sample, hw, l_strides, t_strides, dtypes = _nll_operands(logits, x, lead)
    d = torch.empty_strided(lt.shape, lt.stride(), dtype=lt.dtype, device=lt.device)  # one offset addresses both
    g = grad.reshape(-1)
    if rows:
        _bernoulli_nll_backward_kernel[(rows, triton.cdiv(per_sample, NLL_BLOCK))](
            lt, tt, g, d, per_sample, hw, *l_strides, *t_strides, g.stride(0), **dtypes, BLOCK=NLL_BLOCK
        )
    return d if d.shape == logits.shape else d.view(logits.shape)


class _BernoulliNLL(torch.autograd.Function):
    """Per-sample Bernoulli negative log-likelihood sums (kernels 6 and 7), vmappable.

    Under ``torch.func.vmap`` (the packed trainer's per-run loss) the rule below
    runs the kernels once on the physical ``(P, N, C, H, W)`` tensors.
    """

    @staticmethod
    def forward(logits, x, lead):
        return _bernoulli_nll(logits, x, lead)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, x, lead = inputs
        ctx.save_for_backward(logits, x)
        ctx.lead = lead

    @staticmethod
    def backward(ctx, grad):
        logits, x = ctx.saved_tensors
        return _bernoulli_nll_backward(logits, x, grad, ctx.lead), None, None

    @staticmethod
    def vmap(info, in_dims, logits, x, lead):
        def front(t, dim):
            return t.movedim(dim, 0) if dim is not None else t.expand(info.batch_size, *t.shape)

        return _BernoulliNLL.apply(front(logits, in_dims[0]), front(x, in_dims[1]), lead + 1), 0


def bernoulli_nll_per_sample(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """``binary_cross_entropy_with_logits(logits, x)`` summed per sample, ``(N, C, H, W) -> (N,)`` float32, in one
    kernel pass forward and one backward (torch's composite makes about ten passes, plus autocast's casts);
    None where the kernels do not apply (then the caller uses torch's).

    Applies to float32, or to bfloat16/float16 logits under CUDA autocast
    (which computes torch's version in float32 too), with float targets that need no
    gradient, on a device the kernels run on. Per element: ``max(l, 0) - l*x +
    log(1 + exp(-|l|))`` in float32 (torch's formula rearranged: the same
    value to float32 rounding); the gradient ``(sigmoid(l) - x) * g`` is
    rounded once to the logits' dtype, as torch's through autocast's cast.
    NaN logits give NaN, as in torch.
    """
    if logits.dim() != 4 or logits.shape != x.shape or x.requires_grad:
        return None
    if logits.dtype != torch.float32 and not (  # CUDA's autocast computes this loss in float32 (CPU's does not)
        logits.dtype in _NLL_DTYPES and logits.device.type == "cuda" and torch.is_autocast_enabled("cuda")
    ):
        return None
    if x.dtype not in _NLL_DTYPES or available(logits.device) is not None:
        return None
    return _BernoulliNLL.apply(logits, x, 1)


_CHAIN_DOC = """
    Chains of fused layers (:func:`encode`, :func:`decode`) move each ReLU
    backward from where the gradient is read to where it is written:
    ``mask_input_grad`` says ``h`` is the ReLU output of the fused layer below,
    whose gradient this layer's input-gradient kernel then writes already
    multiplied by ``h > 0`` (the gradient of that layer's pre-activation,
    not of ``h``); ``grad_premasked`` says this layer's own output gradient
    arrives so (its output feeds only a layer with ``mask_input_grad``), so
    its backward kernels load it without the mask. Set them in pairs on
    adjacent layers whose intermediate output has no other use: one masked
    write replaces the masked loads of up to three backward kernels.
"""


def conv2d(h, weight, bias, kernel_size, stride, padding, relu, *, mask_input_grad=False, grad_premasked=False):
    """Every model's ``Conv2d`` (+ ReLU if ``relu``): ``h (P,N,H,W,C)`` (any strides) -> ``(P,N,OH,OW,O)``.

    ``weight (P, O, C, k, k)``, ``bias (P, O)`` or None. The output is contiguous,
    in the compute dtype (autocast's, else ``h``'s). The input gradient is a
    phase-split transposed conv, so the stride must divide ``k`` and
    ``H + 2*padding - k`` (and the same for W), as in the study's layers.
    """
    _require(h)
    if weight.shape[3] != kernel_size or weight.shape[4] != kernel_size:
        raise ValueError(f"weight {tuple(weight.shape)} is not a {kernel_size}x{kernel_size} kernel")
    if kernel_size % stride or any((size + 2 * padding - kernel_size) % stride for size in h.shape[2:4]):
        raise NotImplementedError(
            f"stride {stride} must divide the kernel size {kernel_size} and the padded input size minus it"
        )
    chain = (bool(mask_input_grad), bool(grad_premasked))
    return _Conv2d.apply(h, weight, bias, kernel_size, stride, padding, relu, _compute_dtype(h), chain)


def conv_transpose2d(h, weight, bias, kernel_size, stride, padding, relu, *, mask_input_grad=False, grad_premasked=False):
    """Every model's ``ConvTranspose2d`` (+ ReLU if ``relu``): ``h (P,N,H,W,C)`` -> ``(P,N,OH,OW,O)``.

    ``weight (P, C, O, k, k)``, ``bias (P, O)`` or None; ``OH = (H-1)*stride - 2*padding + k``.
    The stride must divide ``k`` and ``OH`` (phase split). Output contiguous, in the compute dtype.
    """
    _require(h)
    if weight.shape[3] != kernel_size or weight.shape[4] != kernel_size:
        raise ValueError(f"weight {tuple(weight.shape)} is not a {kernel_size}x{kernel_size} kernel")
    chain = (bool(mask_input_grad), bool(grad_premasked))
    return _ConvTranspose2d.apply(h, weight, bias, kernel_size, stride, padding, relu, _compute_dtype(h), chain)


conv2d.__doc__ = (conv2d.__doc__ or "") + _CHAIN_DOC
conv_transpose2d.__doc__ = (conv_transpose2d.__doc__ or "") + _CHAIN_DOC


def encode(params: dict[str, torch.Tensor], x: torch.Tensor, prefix: str = "encoder.") -> tuple[torch.Tensor, torch.Tensor]:
    """``ConvEncoder`` of P stacked models: ``x (P, N, C, 64, 64) -> (mean, logvar)``, each ``(P, N, d)``.

    The first convolution reads ``x`` through its strides (no NHWC copy, no cast copy).
    """
    w, b = _accessors(params, prefix)
    p, n = x.shape[:2]
    h = x.permute(0, 1, 3, 4, 2)  # (P, N, H, W, C) view
    last = len(_ENCODER_CONVS) - 1
    for k, (name, (kernel, stride, padding)) in enumerate(zip(_ENCODER_CONVS, _ENCODER_GEOMETRY)):
        # inside the chain each ReLU backward is applied where the gradient is written (see conv2d)
        h = conv2d(
            h, w(name), b(name), kernel, stride, padding, relu=True,
            mask_input_grad=CHAIN_MASKS and k > 0, grad_premasked=CHAIN_MASKS and k < last,
        )  # fmt: skip
    return encoder_head(params, h.permute(0, 1, 4, 2, 3).reshape(p, n, -1), prefix)  # the module's NCHW flatten


def decode(params: dict[str, torch.Tensor], z: torch.Tensor, prefix: str = "decoder.") -> torch.Tensor:
    """``DeconvDecoder`` of P stacked models: ``z (P, N, d) -> logits (P, N, C, 64, 64)`` (a channels-last view)."""
    w, b = _accessors(params, prefix)
    p, n = z.shape[:2]
    h = decoder_head(params, z, prefix).view(p, n, 64, 4, 4).permute(0, 1, 3, 4, 2)  # the module's (64, 4, 4) NCHW meaning, read as NHWC
    kernel, stride, padding = _DECODER_GEOMETRY
    last = len(_DECODER_DECONVS) - 1
    for k, name in enumerate(_DECODER_DECONVS):
        h = conv_transpose2d(
            h, w(name), b(name), kernel, stride, padding, relu=k < last,
            mask_input_grad=CHAIN_MASKS and k > 0, grad_premasked=CHAIN_MASKS and k < last,
        )  # fmt: skip
    return h.permute(0, 1, 4, 2, 3)
