"""Config problems as one line each: the error a bad study config raises, and how it is worded.

pydantic's messages name a location and a rule; a researcher needs to know the
field, what is wrong with it and what to do. This room turns each validation
error into one ``path: message`` line (``models[1].sweep.beta[2]: ...``), with
"did you mean" and the known keys for a typo, plain words for non-finite
numbers, names with spaces and empty lists, and the study's own two rules
(booleans are not numbers, numbers are finite) applied to plugin params, whose
schemas are the plugins' own models. :class:`ConfigError` carries the lines.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from disentbench.core.config.schema import NAME_PATTERN, StudyConfig


class ConfigError(ValueError):
    """One or more problems with a study config; ``problems`` has one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _format_loc(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _unwrap(annotation: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X; a union keeps its one model or container arm."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            arms = [
                a
                for a in typing.get_args(annotation)
                if (isinstance(a, type) and issubclass(a, BaseModel)) or typing.get_origin(a) in (list, dict)
            ]
            if len(arms) != 1:
                return annotation
            annotation = arms[0]
        else:
            return annotation


def _known_keys(root: Any, loc: tuple[Any, ...]) -> list[str] | None:
    """The field names of the pydantic model at ``loc`` below ``root`` (None if it is not a model)."""
    node = root
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            if not isinstance(part, str) or part not in node.model_fields:
                return None
            node = node.model_fields[part].annotation
        elif typing.get_origin(node) is list and isinstance(part, int):
            node = typing.get_args(node)[0]
        elif typing.get_origin(node) is dict and isinstance(part, str):
            node = typing.get_args(node)[1]
        else:
            return None
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return None


def did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _is_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            return not math.isfinite(float(value))
        except ValueError:
            return False
    return False


def _show_number(value: Any) -> str:
    return str(float(value)) if isinstance(value, (str, float)) else repr(value)


_NUMBER_ERRORS = {
    "finite_number",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "multiple_of",
    "int_parsing",
    "int_from_float",
    "float_parsing",
}

_TOO_SHORT = {
    ("datasets",): "no datasets given; list at least one dataset (see `disentbench plugins`)",
    ("models",): "no models given; list at least one model (see `disentbench plugins`)",
}


def error_message(err: Mapping[str, Any], loc: tuple[Any, ...], root: Any) -> str:
    """pydantic's message for one error, reworded where it would not say what to do."""
    kind, value = err["type"], err.get("input")
    if kind in _NUMBER_ERRORS and _is_non_finite(value):
        return f"{_show_number(value)} is not a finite number; give a finite value"
    if kind == "extra_forbidden" and loc and root is not None:
        known = _known_keys(root, loc[:-1])
        if known is not None:
            key = str(loc[-1])
            return f"{err['msg']}; {did_you_mean(key, known)}known keys: {', '.join(known)}"
    if kind == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == NAME_PATTERN:
        return f"{value!r} may use only letters, digits, '_', '.' and '-' (no spaces); rename it"
    if kind == "too_short" and loc in _TOO_SHORT and root is StudyConfig:
        return _TOO_SHORT[loc]
    return err["msg"].removeprefix("Value error, ")


def pydantic_problems(exc: ValidationError, prefix: str = "", root: Any = None) -> list[str]:
    """One line per error; ``root`` is the model validated (to name the known keys of a typo)."""
    problems = []
    for err in exc.errors():
        # pydantic puts validator names such as "function-after[...]" in loc; drop them
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        problems.append(f"{_format_loc(prefix, loc) or '<config>'}: {error_message(err, loc, root)}")
    return problems


def value_problems(raw: Any, validated: Any, path: str, problems: list[str]) -> None:
    """Plugin params after validation: no boolean read as a number, no non-finite number.

    Plugin schemas are the plugins' own pydantic models, so these two rules of the
    study config are applied here, comparing what was written with what it became.
    """
    if isinstance(raw, bool) and not isinstance(validated, bool) and isinstance(validated, (int, float)):
        problems.append(f"{path}: {str(raw).lower()} is a boolean, not a number; give a number")
    elif isinstance(validated, float) and not math.isfinite(validated):
        problems.append(f"{path}: {_show_number(validated)} is not a finite number; give a finite value")
    elif isinstance(raw, dict) and isinstance(validated, dict):
        for key in raw:
            if key in validated:
                value_problems(raw[key], validated[key], f"{path}.{key}", problems)
    elif isinstance(raw, (list, tuple)) and isinstance(validated, (list, tuple)) and len(raw) == len(validated):
        for i, (r, v) in enumerate(zip(raw, validated)):
            value_problems(r, v, f"{path}[{i}]", problems)
