"""Bars: the dataset part of the example plugin.

A ground-truth dataset rendered in a few milliseconds, with no download: one
white rectangle on black, 64x64, whose factors are its column, its row and its
width. It shows everything a dataset plugin owes disentbench: factor names and
sizes, and the uint8 images of the full factorial grid in grid order (the last
factor varies fastest); sampling, batching onto the device and scaling to
[0, 1] come from :class:`disentbench.GroundTruthData`.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from pydantic import Field

from disentbench import GroundTruthData, PluginConfig


class BarsConfig(PluginConfig):
    positions: int = Field(8, ge=2, le=16, description="Values of each position factor (column, row).")
    widths: int = Field(4, ge=1, le=8, description="Values of the width factor (1 to `widths` bar units).")


class Bars(GroundTruthData):
    """``Bars(config)``: ``positions * positions * widths`` single-channel 64x64 images."""

    name = "bars"
    description = "One rectangle on black (example plugin): column, row and width factors; rendered, no download"
    config_class = BarsConfig

    def __init__(self, config: BarsConfig | None = None):
        self.config = config if config is not None else BarsConfig()
        self.factor_names = ("column", "row", "width")
        self.factor_sizes = (self.config.positions, self.config.positions, self.config.widths)

    @cached_property
    def images(self) -> np.ndarray:
        positions, widths = self.config.positions, self.config.widths
        unit = 64 // (positions + widths)  # room for the widest bar at the last column
        images = np.zeros((positions, positions, widths, 1, 64, 64), dtype=np.uint8)
        for column in range(positions):
            for row in range(positions):
                for width in range(widths):
                    top, left = row * unit, column * unit
                    images[column, row, width, 0, top : top + unit, left : left + (width + 1) * unit] = 255
        return images.reshape(-1, 1, 64, 64)
