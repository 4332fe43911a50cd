"""Pure log-densities, divergences and units shared by priors, regularizers, decoders and metrics.

Every function is element-wise and broadcasts its arguments like torch arithmetic; none
reduces over an axis unless its docstring says so, so callers choose what to sum (pixels,
latent dimensions) and what to average (the batch). Log-densities are in nats. Each
formula is written here once: the decoders, the PixelCNN, the metrics and the
regularizers import it.

References: the Gaussian KL is Kingma & Welling 2014, appendix B; the discretized logistic
is Salimans et al. 2017 (PixelCNN++), eq. 2, with the edge bins taking the remaining mass;
the MMD is Gretton et al. 2012, eq. 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    (PixelCNN++, eq. 2). A middle bin's mass sigmoid(a) - sigmoid(b) is computed as
    log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)): exact and stable at any scale
    (PixelCNN++'s code switches to a density approximation for tiny masses; this does not).
    A mixture takes it per component (`gentk.pixelcnn.logistic_mixture_log_prob`).
    """
    half_width = 1.0 / (bins - 1)
    inv_scale = torch.exp(-log_scale)
    plus = inv_scale * (x - mean + half_width)
    minus = inv_scale * (x - mean - half_width)
    log_cdf_plus = -F.softplus(-plus)  # log sigmoid(plus): the mass of the first bin
    log_survival_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)): the mass of the last bin
    log_mid = log_cdf_plus + log_survival_minus + torch.log(-torch.expm1(minus - plus))
    edge = 1.0 - half_width
    return torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_survival_minus, log_mid))


def bits_per_dim(nll_nats: Tensor | float, dims: int) -> Tensor | float:
    """A negative log-likelihood in nats per image -> bits per dimension (sub-pixel): nll / (dims ln 2)."""
    return nll_nats / (dims * math.log(2))


def mmd_rbf(x: Tensor, y: Tensor, scales: Sequence[float] = (0.2, 0.5, 1.0, 2.0, 5.0)) -> Tensor:
    """Unbiased squared maximum mean discrepancy between samples x (N, D) and y (M, D): a scalar.

    The kernel is a sum of Gaussian RBF kernels exp(-|a-b|^2 / (2 s^2 D)) over `scales`
    (bandwidths relative to sqrt(D), so one setting suits codes of any size; Gretton et al.
    2012, "A Kernel Two-Sample Test", eq. 3). It is about 0 when x and y come from the same
    distribution (it can be slightly negative) and grows as they differ. Differentiable, in
    the dtype of its arguments: a regularizer may minimise it, the code_space metric reports
    it in float64 (`gentk.metrics.mmd_rbf`).
    """
    n, m, d = len(x), len(y), x.shape[1]
    if n < 2 or m < 2:
        raise ValueError("mmd_rbf needs at least two samples on each side")

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        sq = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-sq / (2 * s * s * d)) for s in scales)

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return term_x + term_y - 2 * kxy.mean()


def uniform(shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device, eps: float = 0.0) -> Tensor:
    """U(eps, 1 - eps) noise drawn on the generator's device, then moved to `device`."""
    source = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=source)
    return u.clamp(eps, 1.0 - eps).to(device)


def standard_normal(shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """N(0, I) noise drawn on the generator's device, then moved to `device`."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)
