"""Executors decide where and in what order a study's runs execute.

An executor plugin's factory takes its config and returns an object with
``run(specs, worker) -> list[outcome]``, where ``worker(spec)`` trains,
evaluates and records one run. The built-in ``local`` executor runs them one
after another in this process; it is registered through the same hook as any
third-party executor.
"""

from __future__ import annotations

from typing import Callable, Protocol, TypeVar

from disentbench.core.grid import RunSpec
from disentbench.core.hookspecs import hookimpl
from disentbench.core.model import PluginConfig

T = TypeVar("T")


class Executor(Protocol):
    def run(self, specs: list[RunSpec], worker: Callable[[RunSpec], T]) -> list[T]: ...


class LocalConfig(PluginConfig):
    pass


class LocalExecutor:
    """Runs every spec in this process, in grid order."""

    def __init__(self, config: LocalConfig):
        self.config = config

    def run(self, specs: list[RunSpec], worker: Callable[[RunSpec], T]) -> list[T]:
        return [worker(spec) for spec in specs]


@hookimpl
def register_executors(register):
    register("local", config=LocalConfig, factory=LocalExecutor, description="Run every run in this process, in order.")
