"""Compile every Triton kernel launch of a packed training step for a GPU architecture, without a GPU.

``core/training/kernels/triton_conv.py``'s tests run the kernels in Triton's CPU interpreter,
which checks what they compute but not that Triton's GPU compiler accepts
them. This check records the launches of one study-shaped training step
(encoder and decoder forward and backward at 64x64, batch 64, for 1- and
3-channel images, fp32 and bf16 autocast, plus the fused Adam and reconstruction loss) without running
them, then compiles each distinct one ahead of time to a cubin for
``--arch`` (default 90: H100/H200) with the installed Triton's own compiler
and ptxas, and prints its shared-memory use and (with the cuobjdump Triton
ships) its registers per thread and stack bytes (spills). A kernel that does
not compile, or needs more shared memory than the architecture has, is a
failure (exit 1).

    python benchmarks/triton_compile_check.py              # every launch, sm_90 (about a minute on 2 cores)
    python benchmarks/triton_compile_check.py --quick      # bf16, 1 channel: the study's training mode
    python benchmarks/triton_compile_check.py --arch 80    # A100
    python benchmarks/triton_compile_check.py --quick --tuning t.json   # with TUNING overrides (JSON)

Last run with Triton 3.9.0 for sm_90 (2026-11-28): all 75 launches compile, at most
72 KiB of shared memory and 218 registers per thread, no spills (earlier
kernel versions also with Triton 3.3.1 and 3.6.0); it needs Triton >= 3.3 (its ASTSource API).

Must run without ``TRITON_INTERPRET=1`` (the interpreter's kernels cannot be
compiled); it sets nothing on a GPU and launches nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

#: Shared memory per block (bytes) by compute capability (opt-in maximum).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024}


def record_launches(channels: tuple[int, ...], dtypes: tuple[bool, ...]) -> dict:
    """The distinct kernel launches of one training step at the study's shapes: key -> (kernel, signature, constexprs, options)."""
    import torch
    from torch.func import stack_module_state

    from disentbench.core.nets.conv import ConvEncoder, DeconvDecoder
    from disentbench.core.training.kernels import triton_conv as pt

    launches: dict = {}

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                # as Triton's launcher specializes: an integer 1 becomes a constant, pointers aligned to 16 bytes
                # and integers divisible by 16 carry that divisibility (what lets the compiler vectorize loads)
                signature, constexprs, attrs = {}, {}, {}
                for index, (name, value) in enumerate(zip(self.kernel.arg_names, args)):
                    if isinstance(value, torch.Tensor):
                        signature[name] = "*" + {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float64: "fp64"}[value.dtype]
                        divisible = value.data_ptr() % 16 == 0
                    elif int(value) == 1:
                        signature[name] = "constexpr"
                        constexprs[name] = 1
                        continue
                    else:
                        signature[name] = "i64" if abs(int(value)) >= 2**31 else "i32"
                        divisible = int(value) % 16 == 0
                    if divisible:
                        attrs[(index,)] = [["tt.divisibility", 16]]
                options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
                for name, value in kwargs.items():
                    signature[name] = "constexpr"
                    constexprs[name] = value
                key = (self.kernel.__name__, repr(sorted(constexprs.items())), repr(sorted(signature.items())),
                       repr(sorted(attrs)), repr(options))  # fmt: skip
                launches[key] = (self.kernel, signature, constexprs, attrs, options)

            return launch

    kernels = ("_conv_kernel", "_conv_transpose_kernel", "_wgrad_kernel", "_colsum_kernel", "_adam_kernel",
               "_bernoulli_nll_kernel", "_bernoulli_nll_backward_kernel")  # fmt: skip
    saved = {name: getattr(pt, name) for name in kernels}
    saved_available = pt.available
    try:
        for name in kernels:
            setattr(pt, name, Recorder(saved[name]))
        pt.available = lambda device=None: None  # record on CPU tensors: nothing is launched
        for c in channels:
            shape = (c, 64, 64)
            params = {f"encoder.{k}": v for k, v in stack_module_state([ConvEncoder(shape, 10) for _ in range(2)])[0].items()}
            params |= {f"decoder.{k}": v for k, v in stack_module_state([DeconvDecoder(10, shape) for _ in range(2)])[0].items()}
            params = {k: v.detach().requires_grad_() for k, v in params.items()}
            x = torch.rand(2, 64, *shape)
            for bf16 in dtypes:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    mean, logvar = pt.encode(params, x)
                    logits = pt.decode(params, mean + logvar)
                (logits.float().sum() + mean.float().sum()).backward()
                # the fused reconstruction loss on the pack's (P, N, C, 64, 64) logits, forward and backward
                pt._bernoulli_nll(logits.detach(), x, 2)
                pt._bernoulli_nll_backward(logits.detach(), x, torch.ones(logits.shape[:2]), 2)
        p = params["decoder.dense.0.weight"]
        pt.adam_step_(p.detach(), p.grad, torch.zeros_like(p), torch.zeros_like(p), torch.zeros(2, 6))
    finally:
        for name in kernels:
            setattr(pt, name, saved[name])
        pt.available = saved_available
    return launches


def resource_usage(cubin: bytes, cuobjdump: str | None) -> str:
    """``regs N, spills N B`` of a cubin from the cuobjdump that ships with Triton (empty if there is none)."""
    import re
    import subprocess
    import tempfile

    if cuobjdump is None:
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        out = subprocess.run([cuobjdump, "-res-usage", handle.name], capture_output=True, text=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return f"regs {usage[1]:>3}, stack {usage[2]:>3} B" if usage else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200, 80: A100)")
    parser.add_argument("--quick", action="store_true", help="bf16 and 1 channel only (the study's training mode)")
    parser.add_argument("--tf32", action="store_true", help="fp32 launches with TF32 dots (else IEEE fp32)")
    parser.add_argument(
        "--tuning", default=None, metavar="FILE",
        help="packed_triton.TUNING JSON to compile the launches with (packed_layers.py --write-tuning writes one; "
        'e.g. {"conv_transpose": {"WINDOW": 1}}); default: the heuristic',
    )  # fmt: skip
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: unset TRITON_INTERPRET (the interpreter's kernels cannot be compiled)", file=sys.stderr)
        return 2
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:
        print(f"error: Triton is not installed ({exc}); pip install triton", file=sys.stderr)
        return 2
    import inspect

    if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
        print(f"error: this check needs Triton >= 3.3 (its ASTSource API); found {triton.__version__}", file=sys.stderr)
        return 2
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    cuobjdump = tools if os.access(tools, os.X_OK) else None
    if args.tf32:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 launches as with --tf32 in train_throughput.py
    if args.tuning:
        from disentbench.core.training.kernels import triton_conv as packed_triton
        from disentbench.core.training.kernels.tuning import read_tuning_file

        try:
            packed_triton.TUNING.update(packed_triton.tuning_from_json(read_tuning_file(args.tuning)))
        except ValueError as exc:
            print(f"error: --tuning: {exc}", file=sys.stderr)
            return 2
    launches = record_launches((1,) if args.quick else (1, 3), (True,) if args.quick else (False, True))
    target = GPUTarget("cuda", args.arch, 32)
    limit = SHARED_LIMIT.get(args.arch)
    print(f"# triton {triton.__version__}, sm_{args.arch}: {len(launches)} distinct launches")
    failures = 0
    started = time.perf_counter()
    for (name, *_), (kernel, signature, constexprs, attrs, options) in sorted(launches.items(), key=lambda item: item[0]):
        shown = {k: v for k, v in constexprs.items() if k in ("C", "O", "KH", "S", "PH", "HAS_MASK", "RELU", "BLOCK_M", "BLOCK_N", "BLOCK_K")}
        dtype = str(constexprs.get("IN_T", constexprs.get("L_T", "fp32"))).replace("triton.language.", "")
        try:
            source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
            compiled = triton.compile(source, target=target, options=options)
            shared = compiled.metadata.shared
            status = "ok" if limit is None or shared <= limit else "FAIL"
            failures += status == "FAIL"
            usage = resource_usage(compiled.asm["cubin"], cuobjdump)
            print(f"{status:<4} {name:<24} {dtype:<9} shared {shared:>7,} B  {usage}  {shown}", flush=True)
        except Exception as exc:  # noqa: BLE001 - report every kernel
            failures += 1
            print(f"FAIL {name:<24} {dtype:<9} {type(exc).__name__}: {str(exc).strip()[:400]}  {shown}", flush=True)
    print(f"{len(launches) - failures} of {len(launches)} compiled in {time.perf_counter() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
