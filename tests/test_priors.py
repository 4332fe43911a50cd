"""Priors: samples have the right law, log-densities match torch.distributions, generators reproduce."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

from gentk.priors import CategoricalPrior, GaussianMixturePrior, StandardNormalPrior


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_standard_normal_moments_and_log_prob():
    prior = StandardNormalPrior(size=3)
    z = prior.sample(20000, gen())
    assert z.shape == (20000, 3)
    assert z.mean(0).abs().max() < 0.03
    assert (torch.cov(z.T) - torch.eye(3)).abs().max() < 0.05
    expected = D.Normal(0.0, 1.0).log_prob(z[:5]).sum(-1)
    torch.testing.assert_close(prior.log_prob(z[:5]), expected)


def test_same_generator_seed_same_samples():
    for prior in (StandardNormalPrior(size=4), GaussianMixturePrior(size=2), CategoricalPrior(size=5)):
        torch.testing.assert_close(prior.sample(8, gen(3)), prior.sample(8, gen(3)))
        assert not torch.equal(prior.sample(8, gen(3)), prior.sample(8, gen(4)))


def mixture_reference(prior: GaussianMixturePrior) -> D.Distribution:
    """The same mixture written with torch.distributions: covariance B^T diag(std^2) B."""
    cov = prior.basis.transpose(1, 2) @ torch.diag(prior.stds**2) @ prior.basis
    components = D.MultivariateNormal(prior.means, covariance_matrix=cov)
    return D.MixtureSameFamily(D.Categorical(torch.ones(prior.components)), components)


@pytest.mark.parametrize("size", [2, 4])
def test_mixture_log_prob_matches_torch_distributions(size):
    prior = GaussianMixturePrior(size=size, components=6, radius=3.0, radial_std=0.6, tangential_std=0.2)
    z = torch.randn(50, size, generator=gen()) * 3
    torch.testing.assert_close(prior.log_prob(z), mixture_reference(prior).log_prob(z), rtol=1e-4, atol=1e-4)


def test_mixture_samples_sit_on_the_circle_with_elongated_petals():
    prior = GaussianMixturePrior(size=2, components=10, radius=4.0, radial_std=0.5, tangential_std=0.1)
    z, k = prior.sample_with_components(20000, gen())
    assert torch.bincount(k, minlength=10).min() > 1700  # about 2000 each
    angle = 2 * math.pi * k / 10
    radial = torch.stack([angle.cos(), angle.sin()], -1)
    tangential = torch.stack([-angle.sin(), angle.cos()], -1)
    offset = z - 4.0 * radial
    assert abs((offset * radial).sum(-1).std().item() - 0.5) < 0.02
    assert abs((offset * tangential).sum(-1).std().item() - 0.1) < 0.005
    # the samples are typical under the prior's own density
    assert prior.log_prob(z).mean() > mixture_reference(prior).log_prob(torch.randn(2000, 2) * 4).mean()


def test_mixture_needs_two_dimensions():
    with pytest.raises(ValueError, match="size >= 2"):
        GaussianMixturePrior(size=1)


def test_categorical_samples_are_uniform_one_hot():
    prior = CategoricalPrior(size=4)
    z = prior.sample(8000, gen())
    assert z.shape == (8000, 4)
    assert set(z.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(z.sum(-1), torch.ones(8000))
    assert (z.mean(0) - 0.25).abs().max() < 0.02
    torch.testing.assert_close(prior.log_prob(z[:3]), torch.full((3,), -math.log(4)))
    with pytest.raises(ValueError, match="one-hot"):
        prior.log_prob(torch.full((1, 4), 0.25))
