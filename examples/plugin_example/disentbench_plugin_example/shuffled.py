"""Shuffled: the executor part of the example plugin.

Runs a study's jobs in this process in a seeded random order instead of grid
order, so that a study stopped early has sampled its whole grid evenly rather
than finished the first models only. It shows the whole executor contract:
``run(jobs, worker)`` yields one outcome per job, ``worker(job)`` trains,
evaluates and records one run (and is picklable, for executors that ship it
to other processes).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from pydantic import Field

from disentbench import PluginConfig


class ShuffledConfig(PluginConfig):
    seed: int = Field(0, description="Seed of the run order (the runs themselves keep their own seeds).")


class Shuffled:
    """``Shuffled(config).run(jobs, worker)``: every job once, in a seeded random order."""

    name = "shuffled"
    description = "Every run in this process, in a seeded random order (example plugin)"
    config_class = ShuffledConfig

    def __init__(self, config: ShuffledConfig | None = None):
        self.config = config if config is not None else ShuffledConfig()

    def run(self, jobs: list, worker: Any) -> Iterator:
        order = list(jobs)
        random.Random(self.config.seed).shuffle(order)
        for job in order:
            yield worker(job)
