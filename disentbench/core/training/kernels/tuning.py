"""Launch settings of the Triton kernels (``packed_triton.TUNING``): their JSON form, checked.

Kept apart from :mod:`disentbench.core.training.kernels.triton_conv` so that config validation
(``training.triton_tuning``) and the benchmarks can read and check a tuning
without importing Triton. A tuning maps a kernel kind (``"conv"``,
``"conv_transpose"``, ``"wgrad"``, ``"colsum"``), or a kind at one layer shape
(``"conv_transpose[32,1,4,2]"``: gathered channels, output channels, kernel
size, stride), to integer settings; ``benchmarks/packed_layers.py --sweep ...
--write-tuning FILE`` measures and writes one for the card it runs on.
Settings change launch shapes only, so results differ at most by
floating-point summation order.
"""

from __future__ import annotations

import json
from pathlib import Path

#: The kernel kinds and settings a tuning takes.
TUNING_KINDS = ("conv", "conv_transpose", "wgrad", "colsum")
TUNING_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "ROWS", "PHASE_INNER", "WINDOW", "num_warps", "num_stages")
#: Tile sizes are powers of two (Triton's ``tl.arange``) of at least 16 (``tl.dot``'s smallest operand).
_POWERS_OF_TWO = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "ROWS")
_SWITCHES = ("PHASE_INNER", "WINDOW")


def tuning_key(text: str) -> str | tuple[str, int, int, int, int]:
    """A tuning key from its text: ``"conv"`` or ``"conv_transpose[32,1,4,2]"`` (kind[gathered channels,
    output channels, kernel size, stride]) -> ``"conv"`` or ``("conv_transpose", 32, 1, 4, 2)``."""
    kind, bracket, rest = text.partition("[")
    numbers = rest[:-1].split(",") if bracket and rest.endswith("]") else []
    if kind not in TUNING_KINDS or (bracket and (len(numbers) != 4 or not all(v.strip().isdigit() for v in numbers))):
        raise ValueError(
            f"{text!r} is not a kernel kind: use one of {', '.join(TUNING_KINDS)}, optionally with a layer shape "
            "[gathered channels,output channels,kernel size,stride], e.g. conv_transpose[32,1,4,2]"
        )
    if not bracket:
        return kind
    channels, out_channels, kernel, stride = (int(v) for v in numbers)
    return (kind, channels, out_channels, kernel, stride)


def tuning_key_text(key: str | tuple) -> str:
    """The inverse of :func:`tuning_key`."""
    return key if isinstance(key, str) else f"{key[0]}[{','.join(str(v) for v in key[1:])}]"


def _check_setting(text: str, name: str, value: object) -> None:
    if name not in TUNING_KEYS or not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{text}.{name}={value!r}: settings are integers, named one of {', '.join(TUNING_KEYS)}")
    if name in _POWERS_OF_TWO and (value < 16 or value & (value - 1)):
        raise ValueError(f"{text}.{name}={value}: tile sizes are powers of two, at least 16")
    if name == "num_warps" and value not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"{text}.{name}={value}: warps are 1, 2, 4, 8, 16 or 32")
    if name == "num_stages" and value < 1:
        raise ValueError(f"{text}.{name}={value}: at least 1 stage")
    if name in _SWITCHES and value not in (0, 1):
        raise ValueError(f"{text}.{name}={value}: a switch, 0 or 1")


def tuning_from_json(data: object) -> dict:
    """A tuning dict (``packed_triton.TUNING``'s form) from its JSON form
    (``{"kind" or "kind[c,o,k,s]": {SETTING: int}}``), checked; errors name the entry and setting."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object of kernel kinds; got {type(data).__name__}")
    tuning: dict = {}
    for text, settings in data.items():
        key = tuning_key(text)
        if not isinstance(settings, dict):
            raise ValueError(f"{text}: expected an object of settings; got {settings!r}")
        for name, value in settings.items():
            _check_setting(text, name, value)
        tuning[key] = dict(settings)
    return tuning


def tuning_to_json(tuning: dict) -> dict:
    """The JSON form of a tuning dict (see :func:`tuning_from_json`)."""
    return {tuning_key_text(key): dict(settings) for key, settings in tuning.items()}


def read_tuning_file(path: str | Path) -> dict:
    """The JSON form of the tuning in file ``path``, checked (a ``ValueError`` says what is wrong)."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ValueError(
            f"{str(path)!r} does not exist (benchmarks/packed_layers.py --sweep ... --write-tuning FILE writes one)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable JSON file ({exc})") from None
    tuning_from_json(data)
    return data
