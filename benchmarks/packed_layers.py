"""Per-layer timings of the packed conv encoder/decoder: which formulation is fastest for which layer.

``benchmarks/train_throughput.py`` times whole training steps; this script
times each conv layer of the study architecture for P stacked models, forward
and forward+backward, in every formulation disentbench has for it, so a
short GPU run says where the time of a packed step goes and which form each
layer should use:

* 4x4 stride-2 convolutions (encoder e1, e2): ``implicit`` (core/training/packed/bmm.py's
  shifted-view GEMMs, the bmm formulation's), ``im2col`` (materialised patch
  matrix and one batched GEMM), ``grouped`` (one cuDNN convolution with P
  groups, with vmap's permutations into and out of the grouped layout),
  ``nhwc`` (the same cuDNN convolution on the persistent ``(N, P*C, H, W)``
  channels-last layout of the grouped formulation: no permutations) and
  ``triton`` (core.packed_triton's fused kernel, ReLU included);
* 4x4 stride-2 transposed convolutions (decoder d1..d4): ``window``
  (shifted-view GEMMs), ``fold`` (GEMM into per-tap columns + col2im; bmm's
  choice where channels shrink), ``grouped``, ``nhwc`` and ``triton``.

Every layer but d4 is followed by a ReLU in the study's networks, so every
variant computes layer + ReLU (the triton kernels fuse it; the others run
torch.relu after). Every variant is first checked against the grouped cuDNN
result (the same function; the printed ``max |diff|`` is rounding), then
timed. Activations and weights are random; only shapes matter. Times are
medians of ``--repeat`` runs after warm-up, with a device synchronisation
around each. A variant that cannot run here (triton on CPU) is reported in
one line. As in training, e1's input (the images) needs no gradient, so its
backward is the weight and bias gradients only, and with ``--bf16`` every
other layer's input is bf16 (the previous layer's output under autocast).

    python benchmarks/packed_layers.py --device cpu --pack 4 --batch 8 --repeat 3   # a CPU smoke run
    python benchmarks/packed_layers.py --device cuda --pack 512 --bf16              # the study's batch 64 on a GPU
    python benchmarks/packed_layers.py --device cuda --pack 512 --bf16 --only triton \
        --sweep wgrad.BLOCK_K=128,conv_transpose.PHASE_INNER=1,conv.num_warps=8+conv.BLOCK_M=128 --write-tuning t.json
    python benchmarks/packed_layers.py --device cuda --pack 512 --bf16 --only triton \
        --sweep standard --budget 140 --write-tuning tuning.json    # settings for your card: training.triton_tuning

Writes nothing unless ``--json PATH`` is given.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from disentbench.core.training.kernels.triton_conv import TUNING_KEYS, tuning_from_json, tuning_key, tuning_to_json
from disentbench.core.training.packed import bmm as packed_conv
from disentbench.core.training.packed import grouped as packed_grouped
from disentbench.core.training.trainer import resolve_device

#: (name, kind, C_in, C_out, input height, ReLU after) of the study architecture's strided layers (C = 1 images).
LAYERS = [
    ("e1", "conv", 1, 32, 64, True),
    ("e2", "conv", 32, 32, 32, True),
    ("d1", "deconv", 64, 64, 4, True),
    ("d2", "deconv", 64, 32, 8, True),
    ("d3", "deconv", 32, 32, 16, True),
    ("d4", "deconv", 32, 1, 32, False),
]


def conv_im2col(h, weight, bias):
    """4x4 s2 p1 conv with a materialised patch matrix (the formulation before the implicit GEMMs)."""
    p, n, height, width, c = h.shape
    padded = F.pad(h, (0, 0, 1, 1, 1, 1))
    patches = padded.unfold(2, 4, 2).unfold(3, 4, 2).permute(0, 1, 2, 3, 5, 6, 4)
    cols = patches.reshape(p, n * (height // 2) * (width // 2), 16 * c)
    kernel = weight.permute(0, 3, 4, 2, 1).reshape(p, 16 * c, -1)
    return torch.baddbmm(bias.unsqueeze(1), cols, kernel).view(p, n, height // 2, width // 2, -1)


def conv_grouped(h, weight, bias):
    p, n, height, width, c = h.shape
    x = h.permute(1, 0, 4, 2, 3).reshape(n, p * c, height, width)
    out = F.conv2d(x, weight.reshape(-1, c, 4, 4), bias.reshape(-1), stride=2, padding=1, groups=p)
    return out.view(n, p, -1, height // 2, width // 2).permute(1, 0, 3, 4, 2)


def deconv_grouped(h, weight, bias):
    p, n, height, width, c = h.shape
    x = h.permute(1, 0, 4, 2, 3).reshape(n, p * c, height, width)
    out = F.conv_transpose2d(x, weight.reshape(p * c, -1, 4, 4), bias.reshape(-1), stride=2, padding=1, groups=p)
    return out.view(n, p, -1, 2 * height, 2 * width).permute(1, 0, 3, 4, 2)


class Nhwc:
    """The grouped formulation's layer: input and output stay ``(N, P*C, H, W)`` channels-last.

    ``setup`` converts the ``(P, N, H, W, C)`` input once, outside the timing;
    ``common`` converts an output back for the comparison.
    """

    def __init__(self, kind):
        self.kind = kind

    @staticmethod
    def setup(h):
        p, n, height, width, c = h.shape
        return h.detach().permute(1, 0, 4, 2, 3).reshape(n, p * c, height, width).contiguous(
            memory_format=torch.channels_last
        ).requires_grad_(h.requires_grad)

    def __call__(self, x, weight, bias):
        if self.kind == "conv":
            return packed_grouped._grouped_conv(x, weight, bias, stride=2, padding=1)
        return packed_grouped._grouped_deconv(x, weight, bias)

    @staticmethod
    def common(out, p):
        n, pc, height, width = out.shape
        return out.view(n, p, pc // p, height, width).permute(1, 0, 3, 4, 2)


def triton_layer(kind, relu):
    from disentbench.core.training.kernels import triton_conv as packed_triton

    fn = packed_triton.conv2d if kind == "conv" else packed_triton.conv_transpose2d
    layer = lambda h, weight, bias: fn(h, weight, bias, 4, 2, 1, relu)  # noqa: E731
    layer.fused_relu = True
    layer.unavailable = lambda device: packed_triton.available(device)
    return layer


VARIANTS = {
    "conv": {
        "implicit": packed_conv._conv4x4_s2, "im2col": conv_im2col, "grouped": conv_grouped,
        "nhwc": Nhwc("conv"), "triton": "triton",
    },
    "deconv": {
        "window": packed_conv._deconv4x4_s2, "fold": packed_conv._deconv4x4_s2_fold, "grouped": deconv_grouped,
        "nhwc": Nhwc("deconv"), "triton": "triton",
    },
}  # fmt: skip


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int) -> float:
    """Median milliseconds of ``fn()`` after two warm-up calls."""
    for _ in range(2):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)




#: ``--sweep standard``: the launch settings worth trying on a new card, most promising first (with ``--budget`` the
#: tail is what gets dropped). The 2026-11-28 H200 sweep settled BLOCK_K per kind (warps, stages, BLOCK_M, ROWS and
#: PHASE_INNER moved layer times by 0-7%); this list tries the window form of the transposed convs (all layers, its
#: tiles, then one shape at a time: d4's single output channel, d3 and e2's input gradient, d1), whole-K
#: weight-gradient tiles, the reduction chunks around the defaults, then row tiles, warps and row splits.
STANDARD_SWEEP = (
    "conv_transpose.WINDOW=1", "conv_transpose.WINDOW=1+conv_transpose.BLOCK_K=32",
    "conv_transpose.WINDOW=1+conv_transpose.num_warps=4", "conv_transpose.WINDOW=1+conv_transpose.BLOCK_M=128",
    "conv_transpose[32,1,4,2].WINDOW=1", "conv_transpose[32,32,4,2].WINDOW=1", "conv_transpose[64,64,4,2].WINDOW=1",
    "wgrad.BLOCK_K=256+wgrad.num_warps=8+wgrad.BLOCK_M=32", "wgrad.BLOCK_K=512+wgrad.num_warps=8+wgrad.BLOCK_M=32",
    "wgrad.BLOCK_K=128", "wgrad.BLOCK_K=32", "wgrad.BLOCK_K=128+wgrad.num_warps=8", "wgrad.BLOCK_K=256+wgrad.num_warps=8",
    "conv.BLOCK_K=128", "conv.BLOCK_K=32", "conv_transpose.BLOCK_K=64", "conv_transpose.BLOCK_K=256",
    "conv.BLOCK_M=64", "conv.num_warps=8", "conv_transpose.BLOCK_M=64", "wgrad.ROWS=2048", "wgrad.ROWS=8192",
    "wgrad.BLOCK_M=128",
)  # fmt: skip


def sweep_items(text: str) -> list[str]:
    """``--sweep``'s items: comma-separated (commas inside a layer shape's brackets belong to the item);
    ``standard`` stands for :data:`STANDARD_SWEEP`."""
    items = []
    for item in (part.strip() for part in re.split(r",(?![^\[]*\])", text)):
        if item == "standard":
            items += [i for i in STANDARD_SWEEP if i not in items]
        elif item and item not in items:
            items.append(item)
    return items


def parse_sweep_item(item: str) -> dict:
    """``"wgrad.BLOCK_K=128+conv_transpose[32,1,4,2].WINDOW=1"`` -> ``{"wgrad": {"BLOCK_K": 128},
    ("conv_transpose", 32, 1, 4, 2): {"WINDOW": 1}}`` (a TUNING dict; a bracketed shape limits the
    setting to the layers of that shape, see ``packed_triton.TUNING``)."""
    tuning: dict = {}
    for part in item.split("+"):
        target, _, value = part.partition("=")
        kind, _, key = target.rpartition(".")
        try:
            kind = tuning_key(kind)
        except ValueError as exc:
            raise ValueError(f"{part!r}: {exc}") from None
        if key not in TUNING_KEYS or not value.lstrip("-").isdigit():
            raise ValueError(f"{part!r}: use KIND.KEY=INT or KIND[C,O,K,S].KEY=INT with KEY in {TUNING_KEYS}")
        tuning.setdefault(kind, {})[key] = int(value)
    try:
        tuning_from_json(tuning_to_json(tuning))  # the values' ranges (powers of two, switches, warps)
    except ValueError as exc:
        raise ValueError(f"{item!r}: {exc}") from None
    return tuning


def _touches(tuning: dict, chosen: dict) -> bool:
    """Whether ``tuning`` sets a setting of a kernel kind that ``chosen`` already sets (for any shape)."""
    kind = lambda key: key if isinstance(key, str) else key[0]  # noqa: E731
    taken = {(kind(key), name) for key, settings in chosen.items() for name in settings}
    return any((kind(key), name) in taken for key, settings in tuning.items() for name in settings)


def best_sweep_setting(rows: list[dict], margin: float = 0.03) -> tuple[dict, list[str]]:
    """The sweep's fastest settings combined, and a printed summary.

    Each sweep item's forward+backward time is summed over the layers (only
    items that ran on every layer the heuristic ran on compete). Items that
    beat the heuristic's total by more than ``margin`` are merged greedily,
    largest gain first, skipping any that sets a setting of a kernel kind already
    set (for any layer shape); the result is a ``packed_triton.TUNING`` (empty:
    keep the heuristic).
    Items of different kinds change different kernels, so their gains mostly
    add up; ``train_throughput.py --triton-tuning`` checks the combination in
    whole training steps.
    """
    totals: dict[str, list[float]] = {}
    tunings: dict[str, dict] = {}
    # a setting whose result is further from cuDNN's than the heuristic's (beyond rounding) computes something else
    heuristic_diff = {r["layer"]: r["max_abs_diff_vs_grouped"] for r in rows if r["variant"] == "triton" and "error" not in r}
    for row in rows:
        if "error" not in row and row["variant"].startswith("triton[") and row["layer"] in heuristic_diff:
            if not row["max_abs_diff_vs_grouped"] <= 4 * heuristic_diff[row["layer"]] + 1e-6:
                row["error"] = f"max |diff| {row['max_abs_diff_vs_grouped']:.2e} vs the heuristic's {heuristic_diff[row['layer']]:.2e}"
    rejected = [f"sweep: rejected {r['variant']} on {r['layer']}: {r['error']}" for r in rows if r["variant"].startswith("triton[") and "error" in r]
    for row in rows:
        if row["variant"].startswith("triton") and "error" not in row:
            totals.setdefault(row["variant"], []).append(row["forward_backward_ms"])
            tunings[row["variant"]] = tuning_from_json(row.get("tuning") or {})
    if "triton" not in totals:
        return {}, ["sweep: the heuristic's triton rows did not run; keeping its block sizes"]
    layers = len(totals["triton"])
    sums = {variant: sum(times) for variant, times in totals.items() if len(times) == layers}
    default = sums["triton"]
    lines = rejected + [
        f"sweep: {variant:<44} fwd+bwd summed over {layers} layers {total:9.3f} ms ({total / default:.3f}x heuristic)"
        for variant, total in sorted(sums.items(), key=lambda item: item[1])
    ]
    chosen: dict = {}
    for variant in sorted(sums, key=sums.get):
        if variant == "triton" or sums[variant] > (1 - margin) * default:
            continue
        if _touches(tunings[variant], chosen):
            continue
        for key, settings in tunings[variant].items():
            chosen.setdefault(key, {}).update(settings)
        lines.append(f"sweep: taking {variant} ({default / sums[variant]:.3f}x faster than the heuristic alone)")
    if not chosen:
        lines.append("sweep: keeping the heuristic's block sizes")
    return chosen, lines


def measure(name, kind, c_in, c_out, size, relu, args, device) -> list[dict]:
    generator = torch.Generator(device=device).manual_seed(0)
    p, n = args.pack, args.batch
    h = torch.randn(p, n, size, size, c_in, generator=generator, device=device)
    if args.bf16 and name != "e1":  # in bf16 training every layer but the first reads the previous one's bf16 output
        h = h.to(torch.bfloat16)
    shape = (p, c_out, c_in, 4, 4) if kind == "conv" else (p, c_in, c_out, 4, 4)
    weight = (torch.randn(shape, generator=generator, device=device) * 0.1).requires_grad_()
    bias = (torch.randn(p, c_out, generator=generator, device=device) * 0.1).requires_grad_()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with torch.no_grad(), autocast:
        reference = VARIANTS[kind]["grouped"](h, weight, bias).float()
        reference = torch.relu(reference) if relu else reference
    rows = []
    variants = []
    for variant, layer in VARIANTS[kind].items():
        if args.variants and variant not in args.variants:
            continue
        if layer != "triton":
            variants.append((variant, layer, None))
            continue
        layer = triton_layer(kind, relu)
        reason = layer.unavailable(device)
        if reason is not None:
            print(f"{name:<3} {kind:<6} {variant:<9} not possible here: {reason}", flush=True)
            continue
        variants.append((variant, layer, None))
        for item in args.sweep:  # the same kernels with other block sizes / launch options
            variants.append((f"triton[{item}]", layer, parse_sweep_item(item)))
    started = time.perf_counter()
    for variant, layer, tuning in variants:
        if tuning is not None and args.layer_budget is not None and time.perf_counter() - started > args.layer_budget:
            # out of this layer's share of --budget: the sweep's later items are left out on every layer alike
            print(f"{name:<3} {kind:<6} {variant:<9} skipped (--budget)", flush=True)
            continue
        if tuning is not None:
            from disentbench.core.training.kernels import triton_conv as packed_triton

            packed_triton.TUNING.update({key: dict(settings) for key, settings in tuning.items()})
        setup = getattr(layer, "setup", lambda t: t)
        common = getattr(layer, "common", lambda out, p: out)
        activation = torch.relu if relu and not getattr(layer, "fused_relu", False) else (lambda t: t)
        inputs = setup(h.clone().requires_grad_(name != "e1"))  # as in training: no gradient for the images

        def forward():
            with torch.no_grad(), autocast:
                return activation(layer(inputs, weight, bias))

        def forward_backward():
            with autocast:
                out = activation(layer(inputs, weight, bias))
            out.float().square().mean().backward()

        try:
            difference = (common(forward(), p).float() - reference).abs().max().item()
            row = {
                "layer": name, "kind": kind, "variant": variant, "c_in": c_in, "c_out": c_out, "size": size,
                "max_abs_diff_vs_grouped": difference,
                "tuning": tuning_to_json(tuning) if tuning is not None else None,
                # sweep rows: forward+backward only (what the choice between settings uses)
                "forward_ms": timed(forward, device, args.repeat) if tuning is None else float("nan"),
                "forward_backward_ms": timed(forward_backward, device, args.repeat),
            }  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one failing variant must not hide the others
            row = {"layer": name, "kind": kind, "variant": variant, "error": f"{type(exc).__name__}: {exc}"}
        if tuning is not None:
            from disentbench.core.training.kernels import triton_conv as packed_triton

            packed_triton.TUNING.clear()
        rows.append(row)
        if "error" in row:
            print(f"{name:<3} {kind:<6} {variant:<9} FAILED: {row['error']}", flush=True)
        else:
            print(
                f"{name:<3} {kind:<6} {c_in:>3}->{c_out:<3} {size:>3}px {variant:<9} "
                f"fwd {row['forward_ms']:9.3f} ms  fwd+bwd {row['forward_backward_ms']:9.3f} ms  "
                f"max |diff| {difference:.1e}",
                flush=True,
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pack", type=int, default=512, help="models stacked (default 512)")
    parser.add_argument("--batch", type=int, default=64, help="batch per model (study: 64)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as training.bf16")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--only", nargs="*", default=None, help="layer names (e.g. e2 d3) and/or variants (e.g. triton)")
    parser.add_argument(
        "--sweep", default="",
        help="extra triton rows, each with packed_triton.TUNING overrides KIND.KEY=INT (or KIND[C,O,K,S].KEY=INT: "
        "only layers of that shape) joined by '+', comma-separated (e.g. wgrad.BLOCK_K=128,conv.num_warps=8+conv.BLOCK_M=128,"
        "conv_transpose[32,1,4,2].WINDOW=1); standard: the built-in list worth trying on a new card (STANDARD_SWEEP, "
        "may be combined with other items); the plain triton rows use the heuristic",
    )
    parser.add_argument(
        "--budget", type=float, default=None, metavar="SECONDS",
        help="with --sweep: stop timing sweep items on a layer once it has used its share of SECONDS (the items "
        "are tried in the order given, so list the important ones first); the summary and files are still written",
    )  # fmt: skip
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--write-tuning", default=None,
        help="with --sweep: write the fastest setting as packed_triton.TUNING JSON here ({} = keep the heuristic); "
        "a study's training.triton_tuning and train_throughput.py --triton-tuning read it",
    )
    args = parser.parse_args(argv)
    args.sweep = sweep_items(args.sweep)
    for item in args.sweep:
        try:
            parse_sweep_item(item)
        except ValueError as exc:
            parser.error(f"--sweep: {exc}")
    if args.budget is not None and args.budget <= 0:
        parser.error("--budget: give a positive number of seconds")
    only = set(args.only or ())
    args.layers = only & {layer[0] for layer in LAYERS}
    args.variants = only & {variant for variants in VARIANTS.values() for variant in variants}
    if only - args.layers - args.variants:
        parser.error(f"--only: unknown layer or variant {sorted(only - args.layers - args.variants)}")
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# packed_layers  {name}, torch {torch.__version__}, {args.pack} models x batch {args.batch}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}")  # fmt: skip
    rows = []
    chosen = [layer for layer in LAYERS if not args.layers or layer[0] in args.layers]
    args.layer_budget = args.budget / len(chosen) if args.budget is not None else None
    for layer in chosen:
        rows += measure(*layer, args, device)
    if args.sweep:
        tuning, lines = best_sweep_setting(rows)
        print("\n".join(lines))
        if args.write_tuning:
            with open(args.write_tuning, "w") as handle:
                json.dump(tuning_to_json(tuning), handle, indent=2)
    if args.json:
        with open(args.json, "w") as handle:
            settings = {**vars(args), "layers": sorted(args.layers), "variants": sorted(args.variants)}
            json.dump({"device": name, "torch": torch.__version__, **settings, "rows": rows}, handle, indent=2)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
