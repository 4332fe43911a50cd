"""Shared layers: MLP stacks, activations and output-size arithmetic for strided convolutions;
and the loss scale of fp16 training, for losses that take gradients themselves.

The AAE paper (Makhzani et al. 2016, §2) builds its encoder, decoder and discriminators from
the same block, fully connected layers of 1000 ReLU units; `mlp` is that block with the
widths and activation as arguments.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of `ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], act: str = "relu", *, final_activation: bool = False, batch_norm: bool = False) -> nn.Sequential:
    """Linear layers of widths ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    An activation follows every layer but the last (and the last too if `final_activation`);
    with `batch_norm`, batch normalization (Ioffe & Szegedy 2015) comes before each activation.
    ``mlp([784, 1000, 1000, 8])`` is the AAE paper's encoder body plus an 8-unit output.
    """
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs an input and an output width, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            if batch_norm:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(activation(act))
    return nn.Sequential(*layers)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial size after a convolution: floor((size + 2 padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def upsampled_start_size(size: int, doublings: int) -> int:
    """The smallest start size that reaches at least `size` after `doublings` x2 upsamplings."""
    return max(1, math.ceil(size / 2**doublings))


_LOSS_SCALE: contextvars.ContextVar[float] = contextvars.ContextVar("gentk_loss_scale", default=1.0)


@contextlib.contextmanager
def loss_scale(scale: float) -> Iterator[None]:
    """Within the block, `current_loss_scale` is `scale`.

    Under fp16 AMP the engine computes each loss inside ``loss_scale(GradScaler scale)``. A
    loss that takes a gradient itself (``torch.autograd.grad``, as the R1 penalty does) must
    scale what it differentiates by it and divide the gradient by it, as the scaler does for
    the backward pass (PyTorch's AMP examples, "Gradient penalty"): else small gradients
    flush to zero in fp16.
    """
    token = _LOSS_SCALE.set(float(scale))
    try:
        yield
    finally:
        _LOSS_SCALE.reset(token)


def current_loss_scale() -> float:
    """The fp16 loss scale of the loss being computed (1.0 outside fp16 training)."""
    return _LOSS_SCALE.get()
