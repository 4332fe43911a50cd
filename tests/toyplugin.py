"""Toy components for the foundation tests, loaded as a plugin module (``-p toyplugin``).

They have options but no behaviour: the foundation tests check recipes and plugins, not
models. The names standard_normal and none are the defaults a latent table falls back to.
"""

from __future__ import annotations

import attrs

from gentk.recipe import option


class ToyDecoder:
    """A toy decoder for foundation tests."""

    @attrs.frozen
    class Config:
        layers: int = option(10, "number of layers", ge=1)
        channels: int = option(64, "channels per layer", ge=1)
        likelihood: str = option("bernoulli", "output distribution", choices=("bernoulli", "categorical256"))
        widths: list[int] = option(factory=lambda: [8, 8], doc="widths", ge=1)

    def __init__(self, **kwargs):
        self.kwargs = kwargs


class ToyDataset:
    """A toy dataset for foundation tests."""

    @attrs.frozen
    class Config:
        binarize: str = option("none", "binarization", choices=("none", "dynamic"))


class ToyPart:
    """A toy component without options."""

    def __init__(self, **context):
        self.context = context


def gentk_register_encoders(register):
    register("toyenc", ToyPart)


def gentk_register_priors(register):
    register("standard_normal", ToyPart)


def gentk_register_regularizers(register):
    register("none", ToyPart)


def gentk_register_decoders(register):
    register("toydec", ToyDecoder)


def gentk_register_datasets(register):
    register("toyset", ToyDataset)
