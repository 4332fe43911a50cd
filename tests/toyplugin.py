"""Toy components for the foundation tests, loaded as a plugin module (``-p toyplugin``).

They have options but no behaviour: the foundation tests check recipes and plugins, not
models. Stubs give them the members of their contracts (gentk.contracts), which gentk
checks when a plugin registers a component. The names standard_normal and none are the defaults a latent table falls back to.
"""

from __future__ import annotations

import attrs

from gentk.options import option


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

    def __call__(self, x, c=None):
        raise NotImplementedError

    log_prob = __call__

    def sample(self, n, c=None, *, generator=None, temperature=1.0):
        raise NotImplementedError


class ToyDataset:
    """A toy dataset for foundation tests."""

    @attrs.frozen
    class Config:
        binarize: str = option("none", "binarization", choices=("none", "dynamic"))


class ToyPart:
    """A toy component without options: a stub encoder, prior and regularizer (phase None)."""

    phase = None

    def __init__(self, **context):
        self.context = context

    def __call__(self, x):
        raise NotImplementedError

    def sample(self, n, generator=None):
        raise NotImplementedError


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
