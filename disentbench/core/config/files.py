"""Reading a study config file: YAML, TOML or JSON into a plain dict, or one line saying why not.

The file's format is told by its suffix. YAML is read with ``safe_load`` (no
Python tags), and every parser error becomes a :class:`ConfigError` naming the
file and, where the parser knows it, the line and column, so a broken file
exits like any other bad config instead of with a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from disentbench.core.config.problems import ConfigError


def _yaml_problem(path: Path, exc: Any) -> str:
    """``FILE line L, column C: problem (...)`` from a PyYAML error, on one line."""
    import yaml

    mark = exc.problem_mark or exc.context_mark
    where = f"{path} line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    problem = " ".join(str(exc.problem or exc.context or "cannot parse YAML").split())
    if isinstance(exc, yaml.constructor.ConstructorError):
        hint = "tags such as !!python/... are not allowed in a config; write plain values"
    else:
        hint = "check the YAML syntax there"
    return f"{where}: cannot parse YAML: {problem} ({hint})"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, TOML or JSON file into a dict, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such config file"])
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.MarkedYAMLError as exc:
                raise ConfigError([_yaml_problem(path, exc)]) from None
        elif suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]  # same-API fallback module on 3.10
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError([f"{path}: unknown config format {suffix!r}; use .yaml, .yml, .toml or .json"])
    except ConfigError:
        raise
    except Exception as exc:  # parser errors carry line numbers in their text
        first = " ".join(str(exc).split())
        raise ConfigError([f"{path}: cannot parse {suffix[1:].upper()}: {first}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of study settings"])
    return data
