"""How many runs one packed computation may take, and how it is asked to run fast.

Packed training (``training.pack_size``) trains several runs as one batched
computation. Whether runs can share a pack, and how many fit on a device, are
questions about model shapes and device memory rather than about orchestrating
a study; they are answered here, so that the worker only caches the answers and
the trainer's speed settings are derived from the config in one place.
"""

from __future__ import annotations

import torch

from disentbench.core.config.grid import RunSpec, stable_hash
from disentbench.core.config.schema import StudyConfig
from disentbench.core.display.progress import StudyProgress
from disentbench.core.study.context import StudyContext
from disentbench.core.training.trainer import build_model, resolve_device


def is_cuda(device: str) -> bool:
    try:
        return resolve_device(device).type == "cuda"
    except RuntimeError:
        return False


def speed_options(config: StudyConfig):
    """The packed trainer's ``SpeedOptions`` from ``training``."""
    from disentbench.core.training.packed.trainer import SpeedOptions

    return SpeedOptions(
        channels_last=config.training.channels_last,
        autocast_bf16=config.training.bf16,
        cuda_graphs=config.training.cuda_graphs,
        formulation=config.training.formulation,
        compile=config.training.compile,
        overlap_sampling=config.training.overlap_sampling,
        triton_tuning=config.training.triton_tuning,
    )


def device_bytes_to_come(data, device: torch.device) -> int:
    """Bytes ``data.device_images(device)`` will add to the device: 0 once they are there."""
    return 0 if data.holds_device_images(device) else int(data.images.nbytes)


def parameter_shapes(spec: RunSpec, ctx: StudyContext) -> str:
    """A hash of the model's parameter names and shapes, built on the meta device (no memory, no init).

    Runs whose swept numbers change the architecture (``num_latent``) get different keys. A model
    that cannot be built there gets an empty signature: if its runs cannot share a pack after all,
    the pack trains them one by one.
    """
    registration = ctx.registry.get("model", spec.model)
    data = ctx.datasets.get(spec.dataset, spec.dataset_params)
    try:
        with torch.device("meta"):
            model = registration.factory(registration.make_config(spec.model_params), tuple(data.observation_shape))
        shapes = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    except Exception:
        return ""
    return stable_hash(shapes)


def measure_pack_size(spec: RunSpec, ctx: StudyContext, memory_share: float, bar: StudyProgress) -> int:
    """The auto pack size for runs like ``spec`` on ``ctx.device`` (CUDA): what fits ``memory_share`` of
    80% of its free memory, the dataset's images not yet there reserved; 1 if the probe fails."""
    from disentbench.core.training.packed.trainer import choose_pack_size

    device = ctx.device
    registration = ctx.registry.get("model", spec.model)
    data = ctx.datasets.get(spec.dataset, spec.dataset_params)
    model_config = registration.make_config(spec.model_params)
    try:
        size = choose_pack_size(
            lambda: build_model(registration.factory, model_config, data.observation_shape, 0, device),
            device,
            spec.batch_size,
            free_memory_fraction=0.8 * memory_share,
            speed=speed_options(ctx.config),
            observation_shape=tuple(data.observation_shape),
            reserved_bytes=device_bytes_to_come(data, device),
        )
    except Exception as exc:  # unpackable model, or the probe itself failed: train these runs alone
        bar.message(f"{spec.model} runs on {spec.dataset} are trained one by one ({type(exc).__name__}: {exc})")
        return 1
    bar.message(f"{spec.model} runs on {spec.dataset}: up to {size} per pack on {device}")
    return size
