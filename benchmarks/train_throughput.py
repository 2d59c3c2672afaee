"""Training throughput: the naive one-model eager loop vs disentbench's packed trainer, on one device.

Measured in one run on the same device: (a) the plain one-model loop, which
is disentbench's :class:`~disentbench.core.training.trainer.Trainer` (eager, one model,
channels-last), and (b) :class:`~disentbench.core.training.packed.trainer.PackedTrainer` at
several pack sizes, in fp32 (exact mode) and, on CUDA, in bf16 autocast.
Every packed run has its own seed and hyperparameter (the model's swept
value cycles through the study's values), so the numbers include per-run data
sampling, per-run latent draws and per-run hyperparameters, as in a study.

Printed for each: model-steps/s (one model-step = one optimizer step of one
model on one batch), the ratio to the naive loop, achieved TFLOP/s against the
analytic FLOPs of one model-step, peak memory, the mean ``total`` loss at the
end of the timed interval, and the projected device-days of the full study
(12,600 runs x 300,000 steps at the best rate). Analytic FLOPs: the
multiply-accumulates of every conv, transposed conv and dense layer in one
forward pass of the model's loss (the shapes are read from a forward pass),
x 2 FLOPs per MAC x 3 for forward + backward.

    python benchmarks/train_throughput.py --quick --device cpu          # CI-sized, ~1 minute on 2 cores
    python benchmarks/train_throughput.py --device cuda --tf32          # time-boxed to 4 minutes (H200 figures: benchmarks/README.md)
    python benchmarks/train_throughput.py --device cuda --json out.json --model factor_vae

Pack sizes default to 1, 8, 32, 128 (fp32) plus 128, 256 and 512 (bf16) on
CUDA and to 1, 4 on CPU, in the main ``--formulation`` (default: the
trainer's ``auto``: triton on CUDA where Triton is installed, else bmm;
grouped on CPU). ``--compare`` adds rows of
other formulations at ``--compare-pack-sizes`` (bf16 on CUDA; default: every
other formulation at 128 and 512 models; ``NAME+compile`` for torch.compile,
``triton+unfused`` for triton with torch's reconstruction loss instead of the
fused loss kernels, ``triton+unchained`` with each ReLU backward applied where
the gradient is read instead of where it is written, ``NAME+overlap`` with
the per-run draws made on a side stream),
and every formulation measured gets its own exactness check against
one-by-one training first (a formulation that cannot run here, such as
``triton`` without Triton, is reported in one line). On CUDA the packed rows
use CUDA graphs and channels-last (``--no-graphs``, ``--no-channels-last`` to
ablate); ``--compile`` compiles the main formulation's rows; ``--tf32`` lets
fp32 matmuls use TF32 (cuDNN convolutions use TF32 by default in PyTorch, for
the naive loop and the packed trainer alike).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import resource
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch
from torch import nn

from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.registry import build_registry
from disentbench.core.training.packed.trainer import (
    FORMULATIONS,
    PackedTrainer,
    SpeedOptions,
    UnpackableModel,
    auto_formulation,
    choose_pack_size,
)
from disentbench.core.training.trainer import Trainer, build_model, resolve_device

STUDY_RUNS = 12_600
STUDY_STEPS = 300_000
#: Swept hyperparameter per model (spec/study.md §2), cycled over the runs of a pack.
SWEEPS = {
    "beta_vae": ("beta", [1.0, 2.0, 4.0, 6.0, 8.0, 16.0]),
    "factor_vae": ("gamma", [10.0, 20.0, 30.0, 40.0, 50.0, 100.0]),
    "dip_vae": ("lambda_od", [1.0, 2.0, 5.0, 10.0, 20.0, 50.0]),
    "beta_tcvae": ("beta", [1.0, 2.0, 4.0, 6.0, 8.0, 10.0]),
    "annealed_vae": ("c_max", [5.0, 10.0, 25.0, 50.0, 75.0, 100.0]),
}
#: Stop starting new measurements after this many seconds (the whole run must stay under 4 minutes).
TIME_GUARD_S = 190.0


class SyntheticSprites(GroundTruthData):
    """dSprites-shaped stand-in: 1x64x64 binary images of random rectangles (no files needed)."""

    name = "synthetic_sprites"
    factor_names = ("index",)
    pixel_scale = 1.0

    def __init__(self, count: int = 4096, channels: int = 1, seed: int = 0):
        self.factor_sizes = (count,)
        rng = np.random.default_rng(seed)
        images = np.zeros((count, channels, 64, 64), dtype=np.uint8)
        for i in range(count):
            top, left = rng.integers(0, 48, size=2)
            height, width = rng.integers(6, 17, size=2)
            images[i, :, top : top + height, left : left + width] = 1
        self._images = images

    @property
    def images(self):
        return self._images


# -- analytic FLOPs -------------------------------------------------------------------------


def analytic_flops_per_model_step(model: nn.Module, data: GroundTruthData, batch_size: int, device) -> float:
    """2 x 3 x the MACs of every conv / transposed conv / dense layer in one forward of ``model.loss``."""
    macs = 0

    def count(module, inputs, output):
        nonlocal macs
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            kernel = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, nn.Conv2d):
            # each output element: in_channels / groups x kh x kw MACs
            macs += output.numel() * module.in_channels // module.groups * kernel
        elif isinstance(module, nn.ConvTranspose2d):
            # each input element is scattered to out_channels / groups x kh x kw outputs
            macs += inputs[0].numel() * module.out_channels // module.groups * kernel
        elif isinstance(module, nn.Linear):
            macs += output.numel() // module.out_features * module.in_features * module.out_features

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    handles = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            generator = torch.Generator(device=device).manual_seed(0)
            x = data.sample_batch_on_device(batch_size, generator, device)
            model.loss(x, 0, generator)
    finally:
        for handle in handles:
            handle.remove()
    return 2.0 * 3.0 * macs


# -- measurements ---------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: the process's peak resident set (Linux reports KiB); monotone over the run
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_configs(name: str, config_cls, count: int) -> list:
    field, values = SWEEPS.get(name, (None, []))
    configs = []
    for i in range(count):
        params = {field: values[i % len(values)]} if field else {}
        configs.append(config_cls(**params))
    return configs


class _Stop(Exception):
    pass


def measure_naive(registration, data, args, device) -> dict:
    """The plain eager one-model loop: disentbench's Trainer on a single model."""
    config = run_configs(args.model, registration.config, 1)[0]
    model = build_model(registration.factory, config, data.observation_shape, 0, device)
    chunk = args.naive_chunk
    marks: list[tuple[int, float]] = []

    def on_progress(step):
        synchronize(device)  # the Trainer's log already synced; this is for clarity
        marks.append((step, time.perf_counter()))
        if len(marks) >= 2 and marks[-1][1] - marks[0][1] >= args.seconds:
            raise _Stop

    reset_peak(device)
    trainer = Trainer(
        model, data, seed=0, steps=10**9, batch_size=args.batch_size, device=device,
        log_every=chunk, checkpoint_every=10**9,
    )  # fmt: skip
    logs = []
    try:
        trainer.train(on_log=lambda step, terms: logs.append(terms), on_progress=on_progress)
    except _Stop:
        pass
    (step0, t0), (step1, t1) = marks[0], marks[-1]  # the first chunk is warm-up
    return {
        "mode": "naive eager (1 model, Trainer)",
        "pack": 1,
        "model_steps_per_s": (step1 - step0) / (t1 - t0),
        "iterations": step1 - step0,
        "peak_mib": peak_memory_mib(device),
        "final_total": logs[-1]["total"] if logs else float("nan"),
    }


def measure_packed(
    registration, data, args, device, pack: int, speed: SpeedOptions, mode: str, iterations: int | None = None
) -> dict:
    configs = run_configs(args.model, registration.config, pack)
    seeds = list(range(pack))
    reset_peak(device)
    models = [build_model(registration.factory, c, data.observation_shape, s, device) for c, s in zip(configs, seeds)]
    trainer = PackedTrainer(
        models, data, seeds, steps=10**9, batch_size=args.batch_size, device=device,
        log_every=10**9, checkpoint_every=10**9, speed=speed,
    )  # fmt: skip
    trainer.advance(speed.on(device).graph_warmup_steps + 2)  # warm-up, graph capture
    trainer.current_terms(reset=True)  # syncs; the reported losses average the timed window only
    start = time.perf_counter()
    done = 0
    chunk = max(1, args.packed_chunk)
    while True:
        done += trainer.advance(chunk)
        synchronize(device)
        elapsed = time.perf_counter() - start
        if (iterations is None and elapsed >= args.seconds) or (iterations is not None and done >= iterations):
            break
    terms = trainer.current_terms()
    totals = [t["total"] for t in terms.values()]
    # The per-run draws (batch indices, latent noise) alone: host-side work that stays outside the graph.
    sample_start = time.perf_counter()
    samples = 0
    while samples < 3 or time.perf_counter() - sample_start < 0.5:
        trainer._sample_inputs()
        samples += 1
    synchronize(device)
    sampling_ms = (time.perf_counter() - sample_start) / samples * 1e3
    return {
        "mode": mode,
        "formulation": trainer.formulation,
        "cuda_graph": getattr(trainer._pack, "graph", None) is not None,
        "pack": pack,
        "iteration_ms": elapsed / done * 1e3,
        "sampling_ms": sampling_ms,
        "model_steps_per_s": pack * done / elapsed,
        "iterations": done,
        "peak_mib": peak_memory_mib(device),
        "final_total": float(np.mean(totals)) if totals else float("nan"),
        "final_totals": totals,
    }


def exactness_check(registration, data, args, device, speed: SpeedOptions, runs: int = 3, steps: int = 6) -> float:
    """Max |parameter difference| between packed (with ``speed``) and one-by-one training on this device.

    fp32 with TF32 off and adam_eps = 1e-3, where a parameter difference
    measures the computation rather than Adam's amplification of rounding in
    near-zero gradients (see core/training/packed/trainer.py, "Exactness"). On CUDA this runs
    the graph capture and replays (6 steps > 3 warm-up steps).
    """
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        configs = [c.model_copy(update={"adam_eps": 1e-3}) for c in run_configs(args.model, registration.config, runs)]
        seeds = list(range(100, 100 + runs))
        shape = data.observation_shape
        solo = [build_model(registration.factory, c, shape, s, device) for c, s in zip(configs, seeds)]
        for model, seed in zip(solo, seeds):
            Trainer(
                model, data, seed=seed, steps=steps, batch_size=args.batch_size, device=device, log_every=steps
            ).train()
        packed = [build_model(registration.factory, c, shape, s, device) for c, s in zip(configs, seeds)]
        PackedTrainer(
            packed, data, seeds, steps=steps, batch_size=args.batch_size, device=device, log_every=steps, speed=speed
        ).train()
        return max(
            (a - b).abs().max().item() for x, y in zip(solo, packed) for a, b in zip(x.parameters(), y.parameters())
        )
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def profile_pack(registration, data, args, device, speed: SpeedOptions, pack: int) -> None:
    """Kernel times of a few eager iterations (no CUDA graphs, so kernels are attributed) to ``args.profile``."""
    from torch.profiler import ProfilerActivity, profile

    try:
        speed = dataclasses.replace(speed, cuda_graphs=False)
        configs = run_configs(args.model, registration.config, pack)
        models = [build_model(registration.factory, c, data.observation_shape, s, device) for s, c in enumerate(configs)]
        trainer = PackedTrainer(
            models, data, list(range(pack)), steps=10**9, batch_size=args.batch_size, device=device,
            log_every=10**9, checkpoint_every=10**9, speed=speed,
        )  # fmt: skip
        trainer.advance(3)
        synchronize(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            trainer.advance(5)
            synchronize(device)
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40)
        with open(args.profile, "w") as handle:
            handle.write(f"# {pack} models, bf16={speed.autocast_bf16}, formulation {trainer.formulation}, 5 eager iterations\n")
            handle.write(table)
        print(f"profile (pack {pack}, eager, 5 iterations) written to {args.profile}")
    except Exception as exc:  # noqa: BLE001 - report, keep the measurements
        print(f"profiling failed: {exc!r}")


@contextlib.contextmanager
def triton_chain_masks(on: bool):
    """``packed_triton.CHAIN_MASKS`` inside the block (``+unchained`` rows: off), restored after."""
    from disentbench.core.training.kernels import triton_conv as packed_triton

    saved = packed_triton.CHAIN_MASKS
    packed_triton.CHAIN_MASKS = on
    try:
        yield
    finally:
        packed_triton.CHAIN_MASKS = saved


def load_triton_tuning(path: str) -> dict:
    """Read a ``packed_triton.TUNING`` JSON file (kernel kind or layer shape -> launch settings) and apply it.

    Returns the JSON form (what the results record)."""
    from disentbench.core.training.kernels import triton_conv as packed_triton
    from disentbench.core.training.kernels.tuning import read_tuning_file

    try:
        data = read_tuning_file(path)
    except ValueError as exc:
        sys.exit(f"--triton-tuning: {exc}")
    packed_triton.TUNING.clear()
    packed_triton.TUNING.update(packed_triton.tuning_from_json(data))
    return data


# -- main -------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--quick", action="store_true", help="CI-sized: short measurements (CPU: batch 16)")
    parser.add_argument("--model", default="beta_vae", help="registered model name (default beta_vae)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (the study's); --quick on CPU: 16")
    parser.add_argument("--pack-sizes", default=None, help="fp32 pack sizes, comma-separated")
    parser.add_argument(
        "--bf16-pack-sizes", default=None, help="bf16 pack sizes (CUDA only), comma-separated; '' for none"
    )
    parser.add_argument(
        "--formulation", default="auto", choices=FORMULATIONS, help="the fp32/bf16 rows' formulation"
    )
    parser.add_argument(
        "--compare", default=None,
        help="other formulations to measure (bf16 on CUDA, fp32 elsewhere), comma-separated; NAME+compile adds "
        "torch.compile, triton+unfused computes the reconstruction loss with torch instead of the fused kernels, "
        "triton+unchained masks the ReLU gradients where they are read (packed_triton.CHAIN_MASKS off), "
        "NAME+overlap makes the per-run draws on a side stream (SpeedOptions.overlap_sampling) "
        "(default on CUDA: every other formulation; on CPU: vmap,bmm)",
    )
    parser.add_argument(
        "--compare-pack-sizes", default=None, help="pack sizes of the --compare rows, comma-separated"
    )
    parser.add_argument("--profile", default=None, help="CUDA: write a kernel-time table of the fastest packed row here")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement")
    parser.add_argument("--no-graphs", action="store_true", help="CUDA: packed rows without CUDA graphs")
    parser.add_argument("--no-channels-last", action="store_true", help="CUDA: packed rows without channels-last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the main formulation's rows")
    parser.add_argument("--tf32", action="store_true", help="CUDA: TF32 for fp32 matmuls too")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--triton-tuning", default=None,
        help="JSON file of packed_triton.TUNING block-size overrides (packed_layers.py --write-tuning writes one)",
    )
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.batch_size is None:
        args.batch_size = 16 if (args.quick and not cuda) else 64
    if args.pack_sizes is None:
        args.pack_sizes = "1,8,32" if (cuda and args.quick) else ("1,8,32,128" if cuda else "1,4")
    if args.bf16_pack_sizes is None:
        args.bf16_pack_sizes = ("32" if args.quick else "128,256,512") if cuda else ""
    if args.formulation == "auto":
        args.formulation = auto_formulation(device)  # PackedTrainer's auto for the study models
    if args.compare is None:
        args.compare = ",".join(f for f in FORMULATIONS if f not in ("auto", args.formulation)) if cuda else "vmap,bmm"
    args.compare = [c.strip() for c in args.compare.split(",") if c.strip()]
    for entry in args.compare:
        name, *flags = entry.split("+")
        if name not in FORMULATIONS[1:] or set(flags) - {"compile", "overlap", "unfused", "unchained"}:
            parser.error(
                f"--compare: unknown formulation {entry!r}; use {', '.join(FORMULATIONS[1:])}, optionally +compile "
                "and +overlap (any), +unfused and +unchained (triton)"
            )
    if args.compare_pack_sizes is None:
        args.compare_pack_sizes = ("32" if args.quick else "128,512") if cuda else "4"
    if args.seconds is None:
        args.seconds = (1.5 if args.quick else 4.0) if cuda else (2.0 if args.quick else 10.0)
    args.pack_sizes = [int(p) for p in args.pack_sizes.split(",") if p.strip()]
    args.bf16_pack_sizes = [int(p) for p in args.bf16_pack_sizes.split(",") if p.strip()] if cuda else []
    args.compare_pack_sizes = [int(p) for p in args.compare_pack_sizes.split(",") if p.strip()]
    args.naive_chunk = 20 if cuda else 2
    args.packed_chunk = 5 if cuda else 1
    return args, device


def main(argv=None) -> int:
    args, device = parse_args(argv)
    began = time.perf_counter()
    cuda = device.type == "cuda"
    if cuda and args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    tuning = load_triton_tuning(args.triton_tuning) if args.triton_tuning else {}
    registry = build_registry(load_entry_points=False)
    registration = registry.get("model", args.model)
    data = SyntheticSprites()
    data.device_images(device)
    probe = build_model(registration.factory, registration.config(), data.observation_shape, 0, device)
    flops = analytic_flops_per_model_step(probe, data, args.batch_size, device)
    del probe

    device_name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    print(f"# train_throughput  {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    print(
        f"device: {device} ({device_name}), torch {torch.__version__}, triton {triton_version}, "
        f"threads {torch.get_num_threads()}"
    )
    if args.triton_tuning:
        print(f"triton block sizes: {json.dumps(tuning) if tuning else 'the heuristic'} (from {args.triton_tuning})")
    if cuda:
        tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        print(f"cudnn.allow_tf32={tf32[0]} matmul.allow_tf32={tf32[1]}")
    print(
        f"model: {args.model}, batch {args.batch_size}, analytic {flops / 1e9:.3f} GFLOP per model-step "
        f"(conv/deconv/dense MACs x 2 x 3)"
    )

    speed = SpeedOptions(
        channels_last=cuda and not args.no_channels_last, cuda_graphs=cuda and not args.no_graphs, compile=args.compile,
        formulation=args.formulation,
    )
    compared, unchained = [], []
    for entry in args.compare:  # NAME[+flag...], checked in parse_args
        name, *flags = entry.split("+")
        compared.append(
            dataclasses.replace(
                speed, formulation=name, compile="compile" in flags, fused_loss="unfused" not in flags,
                overlap_sampling="overlap" in flags,
            )  # fmt: skip
        )
        unchained.append("unchained" in flags)
    # exactness of every formulation measured (eager code: compiled code is checked against eager in the tests),
    # and of the side-stream sampling where a row uses it (an ordering mistake there would change the numbers)
    exactness = {}
    checks = [(speed.formulation, False)] + [(c.formulation, c.overlap_sampling and cuda) for c in compared]
    for form, overlap in dict.fromkeys(checks):
        label = form + ("+overlap" if overlap else "")
        try:
            exactness[label] = exactness_check(
                registration, data, args, device,
                dataclasses.replace(speed, formulation=form, compile=False, overlap_sampling=overlap),
            )  # fmt: skip
        except UnpackableModel as exc:  # e.g. triton without Triton: say so in one line
            print(f"exactness: formulation {form} not possible here ({exc})")
            exactness[label] = float("nan")
            continue
        except Exception:  # noqa: BLE001 - report it, still measure speed
            import traceback

            print(f"exactness check of {label} FAILED\n{traceback.format_exc()}", flush=True)
            exactness[label] = float("nan")
        print(
            f"exactness: packed ({'graphs' if speed.cuda_graphs else 'eager'}, formulation {label}) vs one-by-one "
            f"Trainer, 3 runs x 6 steps, fp32 without TF32, adam_eps 1e-3: max |param diff| = {exactness[label]:.2e} "
            f"({'ok' if exactness[label] <= 1e-5 else 'FAIL'}: the bound is 1e-5)",
            flush=True,
        )
    rows = [measure_naive(registration, data, args, device)]
    naive_rate = rows[0]["model_steps_per_s"]
    plan = [(p, speed, "packed fp32", True) for p in args.pack_sizes]
    bf16 = dataclasses.replace(speed, autocast_bf16=True)
    plan += [(p, bf16, "packed bf16 autocast", True) for p in args.bf16_pack_sizes]
    for options, no_chain in zip(compared, unchained):
        options = dataclasses.replace(options, autocast_bf16=cuda)
        mode = f"packed {'bf16' if cuda else 'fp32'}{' compiled' if options.compile else ''}"
        mode += " overlapped sampling" if options.overlap_sampling and cuda else ""  # CUDA-only: dropped elsewhere
        if options.formulation == "triton":  # the ablations of the triton formulation
            mode += ("" if options.fused_loss else " unfused loss") + (" unchained" if no_chain else "")
        plan += [(p, options, mode, not no_chain) for p in args.compare_pack_sizes]
    skipped = []
    for pack, options, mode, chain_masks in plan:
        if time.perf_counter() - began > TIME_GUARD_S:
            skipped.append(f"{mode} x{pack}")
            continue
        # bf16 runs take as many steps as the fp32 run of the same pack size (if any) so their losses compare
        same = [
            r for r in rows
            if r["mode"] == "packed fp32" and r["pack"] == pack and r["formulation"] == options.formulation
        ]
        iterations = same[0]["iterations"] if (options.autocast_bf16 and same) else None
        try:
            with triton_chain_masks(chain_masks):
                rows.append(measure_packed(registration, data, args, device, pack, options, mode, iterations))
            row = rows[-1]
            row["options"] = options
            print(
                f"  {mode} [{row['formulation']}] x{pack}: {row['model_steps_per_s']:.1f} model-steps/s, "
                f"{row['iteration_ms']:.2f} ms/iteration (per-run sampling alone {row['sampling_ms']:.2f} ms), "
                f"peak {row['peak_mib']:.0f} MiB, CUDA graph {'on' if row['cuda_graph'] else 'off'}",
                flush=True,
            )
        except UnpackableModel as exc:
            print(f"  {mode} [{options.formulation}] x{pack}: not possible here ({exc})")
        except (torch.cuda.OutOfMemoryError, MemoryError):
            print(f"{mode} x{pack}: out of memory, skipped")
            torch.cuda.empty_cache() if cuda else None
        except Exception:  # noqa: BLE001 - one broken row must not lose the others
            import traceback

            print(f"{mode} x{pack}: FAILED\n{traceback.format_exc()}", flush=True)

    for row in rows:
        row["ratio_to_naive"] = row["model_steps_per_s"] / naive_rate
        row["tflops"] = row["model_steps_per_s"] * flops / 1e12

    header = (
        f"{'mode':<28} {'form':>7} {'pack':>5} {'model-steps/s':>14} {'x naive':>8} {'TFLOP/s':>8} {'peak MiB':>9} "
        f"{'mean total':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['mode']:<28} {row.get('formulation', '-'):>7} {row['pack']:>5} {row['model_steps_per_s']:>14.1f} {row['ratio_to_naive']:>8.2f} "
            f"{row['tflops']:>8.3f} {row['peak_mib']:>9.0f} {row['final_total']:>11.2f}"
        )
    for row in rows:
        if row["mode"].startswith("packed bf16"):
            same = [
                r for r in rows
                if r["mode"] == "packed fp32" and r["pack"] == row["pack"] and r["formulation"] == row["formulation"]
            ]
            if same and same[0]["iterations"] == row["iterations"] and same[0]["final_totals"]:
                fp32_totals = np.array(same[0]["final_totals"])
                difference = np.abs(np.array(row["final_totals"]) - fp32_totals) / np.abs(fp32_totals)
                row["bf16_vs_fp32_total_rel_diff"] = float(difference.mean())
                print(
                    f"bf16 vs fp32 ({row['formulation']}, pack {row['pack']}, same seeds, {row['iterations']} steps from init): "
                    f"mean |total difference| / total = {difference.mean():.2e} (max {difference.max():.2e})"
                )
    best = max(rows, key=lambda r: r["model_steps_per_s"])
    days = STUDY_RUNS * STUDY_STEPS / best["model_steps_per_s"] / 86400
    unit = "GPU-days" if cuda else "CPU-days (this machine)"
    print(
        f"best: {best['mode']} x{best['pack']} at {best['model_steps_per_s']:.1f} model-steps/s = "
        f"{best['ratio_to_naive']:.1f}x naive; full study ({STUDY_RUNS} x {STUDY_STEPS:,} steps): {days:,.2f} {unit}"
    )
    if cuda:
        try:
            suggested = choose_pack_size(
                lambda: registration.factory(registration.config(), data.observation_shape), device, args.batch_size,
                speed=speed,
            )  # fmt: skip
            print(f"choose_pack_size (fp32, 80% of free memory): {suggested}")
        except Exception as exc:  # noqa: BLE001 - report, do not lose the measurements
            print(f"choose_pack_size failed: {exc!r}")
    if cuda and args.profile and "options" in best:  # the fastest packed row's formulation and pack size
        profile_pack(registration, data, args, device, best["options"], best["pack"])
    if skipped:
        print(f"skipped (time guard {TIME_GUARD_S:.0f} s): {', '.join(skipped)}")
    print(f"wall time {time.perf_counter() - began:.1f} s")
    if args.json:
        for row in rows:
            row.pop("final_totals", None)
            row.pop("options", None)
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "device": str(device), "device_name": device_name, "torch": torch.__version__,
                    "triton": triton_version, "triton_tuning": tuning,
                    "model": args.model, "batch_size": args.batch_size, "gflop_per_model_step": flops / 1e9,
                    "exactness_max_param_diff": exactness,  # per formulation
                    "rows": rows, "best_model_steps_per_s": best["model_steps_per_s"], "study_days": days,
                },
                handle, indent=2,
            )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
