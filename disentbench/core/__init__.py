"""The engine: plugin manager, configs, grid, trainer, tracking, CLI. No study knowledge."""
