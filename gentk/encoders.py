"""Encoders q(z|x): a body (an MLP or a strided conv net) and one head per named latent.

The AAE paper (Makhzani et al. 2016, §2) encodes MNIST with 2 x 1000 ReLU layers; PixelVAE
(Gulrajani et al. 2017) with strided convolutions. PixelGAN autoencoders (Makhzani & Frey
2017, §2) make the encoder stochastic by input noise, z = f(x, n); here n is Gaussian noise
of standard deviation `input_noise` added to x, during training only (like dropout).

Each latent gets its own head on the shared features (docs/models.md):

- ``deterministic``: a linear layer; ``code`` is its output;
- ``gaussian``: a linear layer giving ``mean`` and ``logvar``; ``code`` is the
  reparameterized sample mean + exp(logvar / 2) * eps (Kingma & Welling 2014, §2.4);
- ``categorical``: a linear layer giving ``logits`` (kept for cross-entropy); ``code`` is
  softmax(logits), a point of the simplex.

``Encoder.forward(x)`` returns ``{latent: {"code": ..., "mean"/"logvar" or "logits": ...}}``,
every tensor (B, size). Axis legend: b batch, c channels, h height, w width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import torch
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from gentk.nn import activation, conv_output_size, mlp
from gentk.options import configured, option
from gentk.plugins import hookimpl

HEADS = ("deterministic", "gaussian", "categorical")


class LatentHead(nn.Module):
    """Features (B, F) -> one latent's outputs, by head kind (see the module docstring)."""

    def __init__(self, in_features: int, size: int, kind: str) -> None:
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"unknown head '{kind}'; expected one of {', '.join(HEADS)}")
        self.kind = kind
        self.size = size
        self.linear = nn.Linear(in_features, 2 * size if kind == "gaussian" else size)

    def forward(self, h: Tensor) -> dict[str, Tensor]:
        out = self.linear(h)
        if self.kind == "deterministic":
            return {"code": out}
        if self.kind == "categorical":
            return {"code": out.softmax(-1), "logits": out}
        mean, logvar = rearrange(out, "b (two d) -> two b d", two=2)
        code = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        return {"code": code, "mean": mean, "logvar": logvar}


class Encoder(nn.Module):
    """A body x -> features (B, F) and one `LatentHead` per latent; optional input noise."""

    def __init__(self, body: nn.Module, feature_size: int, latents: Mapping[str, Any], input_noise: float = 0.0) -> None:
        super().__init__()
        if not latents:
            raise ValueError("an encoder needs at least one latent")
        self.body = body
        self.input_noise = input_noise
        self.heads = nn.ModuleDict({name: LatentHead(feature_size, spec.size, spec.head) for name, spec in latents.items()})

    def forward(self, x: Tensor) -> dict[str, dict[str, Tensor]]:
        if self.training and self.input_noise > 0:
            x = x + self.input_noise * torch.randn_like(x)
        h = self.body(x)
        return {name: head(h) for name, head in self.heads.items()}


@attrs.frozen
class MLPEncoderConfig:
    hidden: list[int] = option(doc="widths of the hidden layers (AAE paper: [1000, 1000])", factory=lambda: [1000, 1000], ge=1)
    activation: Literal["relu", "leaky_relu", "elu", "tanh", "softplus"] = option("relu", "nonlinearity after each hidden layer")
    input_noise: float = option(0.0, "std of Gaussian noise added to the input in training: the stochastic encoder z = f(x, n)", ge=0)
    batch_norm: bool = option(
        False, "batch normalization before each hidden nonlinearity (spreads a categorical head's early choices over the batch)"
    )


def mlp_encoder(config: MLPEncoderConfig | None = None, *, input_shape: Sequence[int], latents: Mapping[str, Any], **options: Any) -> Encoder:
    """A fully connected encoder (AAE paper: 2 x 1000 ReLU) with one head per latent."""
    cfg = configured(MLPEncoderConfig, config, options)
    c, h, w = input_shape
    widths = [c * h * w, *cfg.hidden]
    body = nn.Sequential(
        Rearrange("b c h w -> b (c h w)"),
        mlp(widths, cfg.activation, final_activation=True, batch_norm=cfg.batch_norm) if cfg.hidden else nn.Identity(),
    )
    return Encoder(body, widths[-1], latents, cfg.input_noise)


@attrs.frozen
class ConvEncoderConfig:
    channels: list[int] = option(doc="channels of the strided convolutions, each halving height and width", factory=lambda: [64, 128], ge=1)
    kernel: int = option(4, "kernel size of the strided convolutions (stride 2, padding kernel // 2 - 1)", ge=2)
    hidden: list[int] = option(doc="widths of fully connected layers after the convolutions", factory=lambda: [1024], ge=1)
    activation: Literal["relu", "leaky_relu", "elu", "tanh", "softplus"] = option("relu", "nonlinearity after each layer")
    input_noise: float = option(0.0, "std of Gaussian noise added to the input in training: the stochastic encoder z = f(x, n)", ge=0)
    batch_norm: bool = option(
        False, "batch normalization before each hidden nonlinearity (spreads a categorical head's early choices over the batch)"
    )


def conv_encoder(config: ConvEncoderConfig | None = None, *, input_shape: Sequence[int], latents: Mapping[str, Any], **options: Any) -> Encoder:
    """A strided convolutional encoder (as in PixelVAE) with one head per latent."""
    cfg = configured(ConvEncoderConfig, config, options)
    c, h, w = input_shape
    padding = cfg.kernel // 2 - 1
    layers: list[nn.Module] = []
    for n_out in cfg.channels:
        layers.append(nn.Conv2d(c, n_out, cfg.kernel, stride=2, padding=padding))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(n_out))
        layers.append(activation(cfg.activation))
        c, h, w = n_out, conv_output_size(h, cfg.kernel, 2, padding), conv_output_size(w, cfg.kernel, 2, padding)
        if h < 1 or w < 1:
            raise ValueError(f"{len(cfg.channels)} stride-2 convolutions shrink a {tuple(input_shape)} image to nothing; use fewer channels entries")
    widths = [c * h * w, *cfg.hidden]
    layers.append(Rearrange("b c h w -> b (c h w)"))
    if cfg.hidden:
        layers.append(mlp(widths, cfg.activation, final_activation=True, batch_norm=cfg.batch_norm))
    return Encoder(nn.Sequential(*layers), widths[-1], latents, cfg.input_noise)


@hookimpl
def gentk_register_encoders(register):
    register("mlp", mlp_encoder, config=MLPEncoderConfig)
    register("conv", conv_encoder, config=ConvEncoderConfig)
