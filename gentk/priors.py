"""Priors p(z) of a latent: standard normal, a mixture of Gaussians on a circle, uniform categorical.

PixelGAN autoencoders (Makhzani & Frey 2017) impose either a Gaussian prior (z holds the
global structure of an image) or a categorical one (z holds its class) on the aggregated
posterior q(z); the AAE paper (Makhzani et al. 2016, Fig. 2) also uses a mixture of 10
2-D Gaussians. Each prior offers ``sample(n, generator=None) -> (n, size)`` and
``log_prob(z) -> (n,)``, and says where its samples live (``support``: "real" or
"simplex") so that a model can refuse a head that can never match it.

Priors are modules without parameters: their constants are buffers, so they follow the
model to its device. Samples are drawn on the generator's device (when one is given) and
moved to the prior's, so a CPU generator gives the same samples on every device.
"""

from __future__ import annotations

import math

import attrs
import torch
from einops import rearrange
from torch import Tensor, nn

from gentk.distributions import LOG_2PI, normal_log_prob, standard_normal, uniform
from gentk.options import configured, option
from gentk.plugins import hookimpl


class StandardNormalPrior(nn.Module):
    """N(0, I): the prior of the VAE, AAE and Gaussian PixelGAN."""

    support = "real"

    def __init__(self, *, size: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.zeros(size), persistent=False)
        self.register_buffer("logvar", torch.zeros(size), persistent=False)

    def normal_params(self) -> tuple[Tensor, Tensor]:
        """(mean, logvar) of this diagonal Gaussian, for analytic KL terms."""
        return self.mean, self.logvar

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return standard_normal((n, self.size), generator=generator, device=self.mean.device)

    def log_prob(self, z: Tensor) -> Tensor:
        return normal_log_prob(z, self.mean, self.logvar).sum(-1)


class GaussianMixturePrior(nn.Module):
    """An equal-weight mixture of Gaussians whose means lie on a circle (AAE paper, Fig. 2c).

    Component k has its mean at angle 2 pi k / components on a circle of `radius` in the
    first two dimensions, standard deviation `radial_std` along the radius and
    `tangential_std` across it (elongated petals, as in the AAE figure), and `radial_std`
    in any further dimension.

                  . k=2 .
              k=3         k=1          each petal: radial_std along the spoke,
            k=4     (0,0)    k=0 ---   tangential_std across it
              k=5         k=9
                  k=6 . k=8
    """

    support = "real"

    @attrs.frozen
    class Config:
        components: int = option(10, "number of mixture components (10 for the 10 MNIST digits)", ge=1)
        radius: float = option(2.0, "radius of the circle the component means lie on", ge=0)
        radial_std: float = option(0.5, "standard deviation along the radius (and in dimensions past the second)", gt=0)
        tangential_std: float = option(0.1, "standard deviation across the radius", gt=0)

    def __init__(self, config: Config | None = None, *, size: int, **options) -> None:
        super().__init__()
        cfg = configured(self.Config, config, options)
        if size < 2:
            raise ValueError(f"a mixture of Gaussians on a circle needs a latent of size >= 2, got {size}")
        self.size = size
        self.components = components = cfg.components
        angles = 2 * math.pi * torch.arange(components) / components
        radial = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (K, 2) unit vector along each spoke
        tangential = torch.stack([-angles.sin(), angles.cos()], dim=-1)
        means = torch.zeros(components, size)
        means[:, :2] = cfg.radius * radial
        self.register_buffer("means", means, persistent=False)
        # Per component, an orthonormal basis (K, size, size) whose rows are the axes of the
        # petal, and the standard deviation along each row.
        basis = torch.eye(size).repeat(components, 1, 1)
        basis[:, 0, :2] = radial
        basis[:, 1, :2] = tangential
        stds = torch.full((size,), cfg.radial_std)
        stds[1] = cfg.tangential_std
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("stds", stds, persistent=False)

    def sample_with_components(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Samples (n, size) and the component each came from (n,)."""
        device = self.means.device
        k = (uniform((n,), generator=generator, device=device) * self.components).long().clamp_max(self.components - 1)
        eps = standard_normal((n, self.size), generator=generator, device=device) * self.stds
        # z = mean_k + sum_i eps_i axis_{k,i}
        z = self.means[k] + torch.einsum("ni,nid->nd", eps, self.basis[k])
        return z, k

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_with_components(n, generator)[0]

    def log_prob(self, z: Tensor) -> Tensor:
        offset = rearrange(z, "n d -> n 1 d") - self.means  # (n, K, d)
        coords = torch.einsum("nkd,kid->nki", offset, self.basis) / self.stds  # in each petal's axes
        log_component = -0.5 * (coords**2).sum(-1) - torch.log(self.stds).sum() - 0.5 * self.size * LOG_2PI
        return torch.logsumexp(log_component, dim=-1) - math.log(self.components)


class CategoricalPrior(nn.Module):
    """The uniform categorical over `size` classes; samples are one-hot vectors.

    In the categorical PixelGAN the discriminator tells these one-hot samples from the
    encoder's softmax outputs, which pushes the softmax towards confident one-hot codes with
    balanced classes (§2.2).
    """

    support = "simplex"

    def __init__(self, *, size: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("log_probs", torch.full((size,), -math.log(size)), persistent=False)

    def sample_classes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Class indices (n,), uniform over the categories."""
        u = uniform((n,), generator=generator, device=self.log_probs.device)
        return (u * self.size).long().clamp_max(self.size - 1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return nn.functional.one_hot(self.sample_classes(n, generator), self.size).to(self.log_probs.dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) of one-hot rows z (n, size); other points of the simplex are an error."""
        is_one_hot = ((z == 0) | (z == 1)).all(-1) & (z.sum(-1) == 1)
        if not bool(is_one_hot.all()):
            raise ValueError("CategoricalPrior.log_prob takes one-hot rows; soft codes have no probability under a categorical distribution")
        return (z * self.log_probs).sum(-1)


@hookimpl
def gentk_register_priors(register):
    register("standard_normal", StandardNormalPrior)
    register("gaussian_mixture", GaussianMixturePrior)
    register("categorical", CategoricalPrior)
