"""Pure log-densities and divergences shared by priors, regularizers and decoders.

Every function is element-wise and broadcasts its arguments like torch arithmetic; none
reduces over an axis unless its docstring says so, so callers choose what to sum (pixels,
latent dimensions) and what to average (the batch). Log-densities are in nats.

References: the Gaussian KL is Kingma & Welling 2014, appendix B; the discretized logistic
is Salimans et al. 2017 (PixelCNN++), eq. 2, with the edge bins taking the remaining mass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(x; mean, exp(logvar)) per element."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats.

    Arguments broadcast: ``normal_kl(mean, logvar, 0.0, 0.0)`` is the VAE's KL against N(0, 1)
    (Kingma & Welling 2014, appendix B: -1/2 (1 + logvar - mean^2 - exp(logvar))).
    """
    mean2 = torch.as_tensor(mean2, dtype=mean1.dtype, device=mean1.device)
    logvar2 = torch.as_tensor(logvar2, dtype=mean1.dtype, device=mean1.device)
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def categorical_kl(logits_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(Cat(softmax(logits_q)) || Cat(exp(log_p))), summed over the last axis (categories).

    `log_p` holds normalized log-probabilities and broadcasts against `logits_q`.
    """
    log_q = F.log_softmax(logits_q, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) per element, for x in {0, 1}."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256) -> Tensor:
    """log P(x) per element under a logistic discretized to `bins` levels of [-1, 1].

    x holds bin centres, -1 + 2 k / (bins - 1). Each bin has half-width 1 / (bins - 1); the
    first and last bins extend to -inf and +inf, so the probabilities of all bins sum to 1
    (PixelCNN++, eq. 2). Where a bin's mass underflows, the density at its centre times
    the bin width stands in for it.
    """
    half_width = 1.0 / (bins - 1)
    inv_scale = torch.exp(-log_scale)
    centred = x - mean
    upper = inv_scale * (centred + half_width)
    lower = inv_scale * (centred - half_width)
    log_cdf_upper = upper - F.softplus(upper)  # log sigmoid(upper), for the first bin
    log_survival_lower = -F.softplus(lower)  # log (1 - sigmoid(lower)), for the last bin
    mass = torch.sigmoid(upper) - torch.sigmoid(lower)
    middle = inv_scale * centred
    log_density_mid = middle - log_scale - 2.0 * F.softplus(middle)
    log_mass = torch.where(mass > 1e-5, torch.log(mass.clamp_min(1e-12)), log_density_mid + math.log(2 * half_width))
    edge = 1.0 - half_width
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_survival_lower, log_mass))


def uniform(shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device, eps: float = 0.0) -> Tensor:
    """U(eps, 1 - eps) noise drawn on the generator's device, then moved to `device`."""
    source = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=source)
    return u.clamp(eps, 1.0 - eps).to(device)


def standard_normal(shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """N(0, I) noise drawn on the generator's device, then moved to `device`."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)
