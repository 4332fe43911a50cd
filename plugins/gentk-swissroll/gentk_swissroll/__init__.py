"""The swiss-roll prior of the adversarial autoencoder paper, as a gentk plugin.

Makhzani et al. 2016, "Adversarial Autoencoders", §2.1 and Figure 2: a 2-D prior whose
mass lies along a spiral. A point is drawn by taking u ~ U(0, 1) and placing it at
radius sqrt(u) and angle 2 pi * turns * sqrt(u) (so the density along the arc is even),
plus a little isotropic Gaussian noise.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import nn

import gentk
from gentk.options import option


class SwissRollPrior(nn.Module):
    """2-D swiss roll (AAE paper, Figure 2): samples spread evenly along a spiral."""

    @attrs.frozen
    class Config:
        turns: float = option(2.0, "number of turns of the spiral", gt=0)
        radius: float = option(3.0, "outer radius of the spiral", gt=0)
        noise: float = option(0.05, "standard deviation of the Gaussian noise around the spiral", ge=0)

    def __init__(self, config: Config, *, size: int) -> None:
        super().__init__()
        if size != 2:
            raise gentk.GentkError(f"the swiss_roll prior is 2-D, but the latent has size {size}. Set the latent's size = 2.")
        self.size, self.turns, self.radius, self.noise = size, config.turns, config.radius, config.noise
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # follows .to(device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n points (n, 2) on the spiral."""
        device = self._anchor.device
        u = torch.rand(n, generator=generator, device=device).sqrt()
        angle = 2 * math.pi * self.turns * u
        points = torch.stack([angle.cos(), angle.sin()], dim=-1) * (self.radius * u)[:, None]
        return points + self.noise * torch.randn(n, 2, generator=generator, device=device)


@gentk.hookimpl
def gentk_register_priors(register):
    register("swiss_roll", SwissRollPrior)
