"""Factorized decoders p(x|c) = prod_i p(x_i | c): Bernoulli, Gaussian and discretized logistic.

These are the likelihoods of the VAE (Kingma & Welling 2014) and of the AAE (Makhzani et al.
2016): every pixel is independent given the code c, so unlike the PixelCNN of PixelGAN
autoencoders (gentk.pixelcnn) all the image's structure must pass through c. A decoder is
two parts composed: a body (an MLP, or a linear layer then x2 transposed convolutions) maps c
to a map of distribution parameters, and a likelihood turns that map into log p(x|c) and
samples. Without a code (cond_size = 0) the parameter map is itself learned.

Module API shared with the PixelCNN decoder (docs/architecture.md):
``forward(x, c) -> log p(x|c)`` per image (B,) in nats (also ``log_prob``), and
``sample(n, c=None, *, generator=None, temperature=1.0)`` -> (n, C, H, W) in [0, 1];
temperature 0 gives the most probable value of each pixel. A Bernoulli decoder
(``bernoulli_probs`` true) also takes ``return_probs=True`` and returns the samples with
their mean images, the probabilities sigmoid(logit) (at temperature 1) each pixel was drawn from. Each factory takes its
validated config (``bernoulli_decoder(config, image_shape=..., cond_size=...)``) or, from
Python, the same options as keywords.

Axis legend: b batch, p distribution parameters per pixel, c channels, h height, w width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import torch
from einops import rearrange, reduce
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from gentk.distributions import bernoulli_log_prob, discretized_logistic_log_prob, normal_log_prob, standard_normal, uniform
from gentk.errors import GentkError
from gentk.nn import activation, mlp, upsampled_start_size
from gentk.options import configured, option
from gentk.pixelcnn import PixelCNNDecoder
from gentk.plugins import hookimpl

# Research code imports every decoder from here (README.md, "Research code"); `pixelcnn` registers itself.
__all__ = [
    "BernoulliLikelihood",
    "DiscretizedLogisticLikelihood",
    "FactorizedDecoder",
    "GaussianLikelihood",
    "PixelCNNDecoder",
    "bernoulli_decoder",
    "gaussian_decoder",
    "logistic_decoder",
]

# --------------------------------------------------------------------------- likelihoods


class BernoulliLikelihood(nn.Module):
    """One logit per pixel; for binary data (binarized MNIST)."""

    params_per_pixel = 1

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        return bernoulli_log_prob(x, params[0])

    def sample(self, params: Tensor, *, generator: torch.Generator | None, temperature: float) -> Tensor:
        logits = params[0]
        if temperature == 0:
            return (logits > 0).to(logits.dtype)
        u = uniform(tuple(logits.shape), generator=generator, device=logits.device)
        return (u < torch.sigmoid(logits / temperature)).to(logits.dtype)


class GaussianLikelihood(nn.Module):
    """A Gaussian per pixel with mean sigmoid(output) in [0, 1].

    variance = "fixed": standard deviation `std`; "learned": one learned log-std per channel
    (initialized at `std`); "predicted": a second output map gives each pixel's log-variance.
    """

    def __init__(self, channels: int, variance: str, std: float) -> None:
        super().__init__()
        self.variance = variance
        self.params_per_pixel = 2 if variance == "predicted" else 1
        logvar = torch.full((channels, 1, 1), 2 * math.log(std))
        if variance == "learned":
            self.logvar = nn.Parameter(logvar)
        else:
            self.register_buffer("logvar", logvar, persistent=False)

    def _mean_logvar(self, params: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.sigmoid(params[0])
        logvar = params[1] if self.variance == "predicted" else self.logvar.expand_as(mean)
        return mean, logvar

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        mean, logvar = self._mean_logvar(params)
        return normal_log_prob(x, mean, logvar)

    def sample(self, params: Tensor, *, generator: torch.Generator | None, temperature: float) -> Tensor:
        mean, logvar = self._mean_logvar(params)
        noise = standard_normal(tuple(mean.shape), generator=generator, device=mean.device)
        return (mean + temperature * torch.exp(0.5 * logvar) * noise).clamp(0, 1)


class DiscretizedLogisticLikelihood(nn.Module):
    """A logistic per pixel discretized to `bins` levels (PixelCNN++ eq. 2, one component).

    Data in [0, 1] holding k / (bins - 1) are mapped to [-1, 1], where the bins are centred.
    """

    params_per_pixel = 2

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = bins

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        mean, log_scale = params[0], params[1].clamp_min(-7.0)  # floor as in PixelCNN++: scales below e^-7 only add round-off
        return discretized_logistic_log_prob(2 * x - 1, mean, log_scale, self.bins)

    def sample(self, params: Tensor, *, generator: torch.Generator | None, temperature: float) -> Tensor:
        mean, log_scale = params[0], params[1].clamp_min(-7.0)
        u = uniform(tuple(mean.shape), generator=generator, device=mean.device, eps=1e-5)
        # inverse CDF of the logistic: mean + scale * log(u / (1 - u))
        y = mean + temperature * torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        level = torch.round((y.clamp(-1, 1) + 1) / 2 * (self.bins - 1))
        return level / (self.bins - 1)


# --------------------------------------------------------------------------- bodies


class ConstantBody(nn.Module):
    """A learned parameter map for an unconditional factorized decoder (cond_size = 0)."""

    def __init__(self, out_channels: int, height: int, width: int) -> None:
        super().__init__()
        self.map = nn.Parameter(torch.zeros(out_channels, height, width))

    def forward(self, c: Tensor | None, n: int) -> Tensor:
        return self.map.expand(n, *self.map.shape)


class MLPBody(nn.Module):
    """c -> hidden layers -> (B, out_channels, H, W)."""

    def __init__(self, cond_size: int, hidden: Sequence[int], act: str, out_channels: int, height: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            mlp([cond_size, *hidden, out_channels * height * width], act), Rearrange("b (c h w) -> b c h w", c=out_channels, h=height, w=width)
        )

    def forward(self, c: Tensor, n: int) -> Tensor:
        return self.net(c)


class DeconvBody(nn.Module):
    """c -> linear -> (channels[0], h0, w0) -> x2 transposed convs -> (B, out_channels, H, W).

    h0 = ceil(H / 2^L) for L = len(channels) upsamplings; the last map is cropped to H x W.
    """

    def __init__(self, cond_size: int, channels: Sequence[int], act: str, out_channels: int, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width
        h0, w0 = upsampled_start_size(height, len(channels)), upsampled_start_size(width, len(channels))
        layers: list[nn.Module] = [
            nn.Linear(cond_size, channels[0] * h0 * w0),
            activation(act),
            Rearrange("b (c h w) -> b c h w", c=channels[0], h=h0, w=w0),
        ]
        for n_in, n_out in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1), activation(act)]
        layers.append(nn.ConvTranspose2d(channels[-1], out_channels, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, c: Tensor, n: int) -> Tensor:
        return self.net(c)[:, :, : self.height, : self.width]


# --------------------------------------------------------------------------- the decoder


class FactorizedDecoder(nn.Module):
    """A body (code -> parameter map) composed with a per-pixel likelihood."""

    def __init__(self, body: nn.Module, likelihood: nn.Module, image_shape: Sequence[int], cond_size: int) -> None:
        super().__init__()
        self.body = body
        self.likelihood = likelihood
        self.image_shape = tuple(image_shape)
        self.cond_size = cond_size

    def _params(self, c: Tensor | None, n: int) -> Tensor:
        if self.cond_size > 0 and (c is None or c.shape != (n, self.cond_size)):
            raise ValueError(f"this decoder is conditioned on a code of shape ({n}, {self.cond_size}), got {None if c is None else tuple(c.shape)}")
        if self.cond_size == 0 and c is not None:
            raise ValueError("this decoder is unconditional (cond_size = 0) but was given a code")
        return rearrange(self.body(c, n), "b (p c) h w -> p b c h w", p=self.likelihood.params_per_pixel)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """log p(x|c) per image (B,), in nats."""
        return reduce(self.likelihood.log_prob(x, self._params(c, x.shape[0])), "b c h w -> b", "sum")

    log_prob = forward

    @property
    def bernoulli_probs(self) -> bool:
        return isinstance(self.likelihood, BernoulliLikelihood)

    @torch.no_grad()
    def sample(
        self, n: int, c: Tensor | None = None, *, generator: torch.Generator | None = None, temperature: float = 1.0, return_probs: bool = False
    ):
        """n images (n, C, H, W) in [0, 1] from p(x|c); temperature 0 gives the per-pixel mode.

        return_probs (Bernoulli only): also the mean images, P(x = 1 | c) per pixel (n, C, H, W).
        """
        if return_probs and not self.bernoulli_probs:
            raise GentkError(
                f"return_probs: a {type(self.likelihood).__name__} has no probability of 1 per pixel (only a Bernoulli decoder has); "
                "sample without it."
            )
        params = self._params(c, n)
        x = self.likelihood.sample(params, generator=generator, temperature=temperature)
        return (x, torch.sigmoid(params[0])) if return_probs else x


@attrs.frozen
class BodyOptions:
    body: Literal["mlp", "deconv"] = option("mlp", "mlp: fully connected (AAE, VAE); deconv: linear then x2 transposed convolutions")
    hidden: list[int] = option(doc="hidden widths of the mlp body (AAE paper: [1000, 1000])", factory=lambda: [1000, 1000], ge=1)
    channels: list[int] = option(doc="channels of the deconv body, one x2 upsampling each", factory=lambda: [128, 64], ge=1)
    activation: Literal["relu", "leaky_relu", "elu", "tanh", "softplus"] = option("relu", "nonlinearity of the body")


def _build(cfg: BodyOptions, likelihood: nn.Module, image_shape: Sequence[int], cond_size: int) -> FactorizedDecoder:
    c, h, w = image_shape
    out_channels = likelihood.params_per_pixel * c
    if cond_size == 0:
        body: nn.Module = ConstantBody(out_channels, h, w)
    elif cfg.body == "mlp":
        body = MLPBody(cond_size, cfg.hidden, cfg.activation, out_channels, h, w)
    else:
        body = DeconvBody(cond_size, cfg.channels, cfg.activation, out_channels, h, w)
    return FactorizedDecoder(body, likelihood, image_shape, cond_size)


@attrs.frozen
class BernoulliConfig(BodyOptions):
    pass


def bernoulli_decoder(config: BernoulliConfig | None = None, *, image_shape: Sequence[int], cond_size: int, **options: Any) -> FactorizedDecoder:
    """Independent Bernoulli pixels, for binarized images (VAE, AAE)."""
    return _build(configured(BernoulliConfig, config, options), BernoulliLikelihood(), image_shape, cond_size)


@attrs.frozen
class GaussianConfig(BodyOptions):
    variance: Literal["fixed", "learned", "predicted"] = option("fixed", "fixed std, one learned std per channel, or a std predicted per pixel")
    std: float = option(0.1, "the fixed standard deviation (initial value when learned)", gt=0)


def gaussian_decoder(config: GaussianConfig | None = None, *, image_shape: Sequence[int], cond_size: int, **options: Any) -> FactorizedDecoder:
    """Independent Gaussian pixels with mean in [0, 1], for continuous images (a density, not a probability)."""
    cfg = configured(GaussianConfig, config, options)
    return _build(cfg, GaussianLikelihood(image_shape[0], cfg.variance, cfg.std), image_shape, cond_size)


@attrs.frozen
class LogisticConfig(BodyOptions):
    bins: int = option(256, "number of intensity levels of the data (256 for 8-bit images)", ge=2)


def logistic_decoder(config: LogisticConfig | None = None, *, image_shape: Sequence[int], cond_size: int, **options: Any) -> FactorizedDecoder:
    """Independent discretized-logistic pixels, for 8-bit images (exact probabilities)."""
    cfg = configured(LogisticConfig, config, options)
    return _build(cfg, DiscretizedLogisticLikelihood(cfg.bins), image_shape, cond_size)


@hookimpl
def gentk_register_decoders(register):
    register("bernoulli", bernoulli_decoder, config=BernoulliConfig)
    register("gaussian", gaussian_decoder, config=GaussianConfig)
    register("logistic", logistic_decoder, config=LogisticConfig)
