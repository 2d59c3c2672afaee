"""Reading a study config file: YAML, TOML or JSON into a plain dict, or one line saying why not.

The file's format is told by its suffix. YAML is read with ``safe_load`` (no
Python tags) and a key given twice in one mapping is an error naming the key
and both lines (YAML would silently keep the last), and every parser error becomes a :class:`ConfigError` naming the
file and, where the parser knows it, the line and column, so a broken file
exits like any other bad config instead of with a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import stat
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
        if "given twice" in problem:
            return f"{where}: {problem}"
        hint = "tags such as !!python/... are not allowed in a config; write plain values"
    else:
        hint = "check the YAML syntax there"
    return f"{where}: cannot parse YAML: {problem} ({hint})"


def _yaml_loader(fast: bool = True):
    """A safe loader (libyaml's where installed and ``fast``: 10x faster on big files) that refuses duplicate keys."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader) if fast else yaml.SafeLoader

    class UniqueKeyLoader(base):  # type: ignore[valid-type,misc]  # base chosen at run time
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base constructor reports unhashable keys
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"key {key!r} is given twice (first on line {seen[key].start_mark.line + 1}); "
                        "YAML would keep only the last, so remove or rename one",
                        key_node.start_mark,
                    )
                seen[key] = key_node
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _not_readable(path: Path) -> str | None:
    """Why ``path`` cannot be read as a config file (missing, a folder, a FIFO, a symlink loop), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path}: a symbolic link loop (the link points back to itself); point it at the config file"
        if exc.errno == errno.EACCES:
            return f"{path}: permission denied; make it readable"
        if os.path.islink(path):
            return f"{path}: a symbolic link to {os.readlink(path)!r}, which does not exist"
        return f"{path}: no such config file"
    if stat.S_ISDIR(mode):
        return f"{path}: a folder, not a config file; give the YAML, TOML or JSON file in it"
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        return f"{path}: {kind}, not a regular file; give a config file saved on disk"
    return None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, TOML or JSON file into a dict, with one-line errors."""
    path = Path(path)
    problem = _not_readable(path)
    if problem is not None:
        raise ConfigError([problem])
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        raise ConfigError([f"{path}: permission denied; make it readable"]) from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506  # a safe loader
            except yaml.YAMLError:
                try:  # the pure-Python parser words its errors better (it names a tab, for one)
                    data = yaml.load(text, Loader=_yaml_loader(fast=False))  # noqa: S506  # a safe loader
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
