"""Regularizers: known KL values, analytic = Monte Carlo, warm-up and free bits, GAN losses, and the
adversarial game pulling codes to the prior on a toy 2-D problem."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gentk.distributions import categorical_kl, normal_kl, normal_log_prob
from gentk.nn import loss_scale
from gentk.priors import CategoricalPrior, GaussianMixturePrior, StandardNormalPrior
from gentk.regularizers import AdversarialRegularizer, KLRegularizer, free_bits_kl, gan_discriminator_loss, gan_generator_loss, r1_penalty

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_kl_of_identical_gaussians_is_zero():
    mean, logvar = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(normal_kl(mean, logvar, mean, logvar), torch.zeros(4, 3))


def test_analytic_kl_matches_a_monte_carlo_estimate():
    g = torch.Generator().manual_seed(0)
    mean1, logvar1 = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([-0.5, 0.3, 0.0])
    mean2, logvar2 = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.2, -0.4, 0.7])
    z = mean1 + torch.exp(0.5 * logvar1) * torch.randn(200000, 3, generator=g)
    mc = (normal_log_prob(z, mean1, logvar1) - normal_log_prob(z, mean2, logvar2)).mean(0)
    torch.testing.assert_close(mc, normal_kl(mean1, logvar1, mean2, logvar2), atol=0.01, rtol=0.01)


def test_categorical_kl_to_uniform_is_log_k_minus_entropy():
    logits = torch.randn(5, 7)
    q = logits.softmax(-1)
    entropy = -(q * q.log()).sum(-1)
    torch.testing.assert_close(categorical_kl(logits, torch.full((7,), -math.log(7))), math.log(7) - entropy)


def gaussian_head(batch=4, size=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean, logvar = torch.randn(batch, size, generator=g), torch.randn(batch, size, generator=g) * 0.3
    return {"mean": mean, "logvar": logvar, "code": mean + torch.exp(0.5 * logvar) * torch.randn(batch, size, generator=g)}


def test_kl_regularizer_estimators_agree():
    head = gaussian_head(batch=1, size=2)
    head = {k: v.expand(100000, 2) for k, v in head.items() if k != "code"}
    head["code"] = head["mean"] + torch.exp(0.5 * head["logvar"]) * torch.randn(100000, 2)
    prior = StandardNormalPrior(size=2)
    analytic = KLRegularizer(size=2, prior=prior, head="gaussian")
    monte_carlo = KLRegularizer(size=2, prior=prior, head="gaussian", estimator="monte_carlo")
    assert analytic.kl_terms(head).shape == (100000, 2) and monte_carlo.kl_terms(head).shape == (100000, 1)
    torch.testing.assert_close(monte_carlo.kl(head).mean(), analytic.kl(head).mean(), atol=0.02, rtol=0.01)


def test_kl_regularizer_falls_back_to_monte_carlo_for_a_mixture_prior():
    prior = GaussianMixturePrior(size=2)
    reg = KLRegularizer(size=2, prior=prior, head="gaussian")
    head = gaussian_head(size=2)
    expected = normal_log_prob(head["code"], head["mean"], head["logvar"]).sum(-1) - prior.log_prob(head["code"])
    torch.testing.assert_close(reg.kl(head), expected)
    with pytest.raises(ValueError, match="no analytic KL"):
        KLRegularizer(size=2, prior=prior, head="gaussian", estimator="analytic")


def test_kl_regularizer_on_a_categorical_head_is_exact():
    logits = torch.randn(3, 4)
    reg = KLRegularizer(size=4, prior=CategoricalPrior(size=4), head="categorical")
    torch.testing.assert_close(reg.kl({"logits": logits, "code": logits.softmax(-1)}), categorical_kl(logits, torch.full((4,), -math.log(4))))


def test_kl_needs_a_stochastic_head():
    with pytest.raises(ValueError, match="deterministic"):
        KLRegularizer(size=2, prior=StandardNormalPrior(size=2), head="deterministic")


def test_warmup_raises_the_weight_linearly():
    reg = KLRegularizer(size=3, prior=StandardNormalPrior(size=3), head="gaussian", weight=2.0, warmup=10)
    head = gaussian_head()
    full = reg.kl(head).mean()
    for step, factor in [(0, 0.0), (5, 1.0), (10, 2.0), (50, 2.0)]:
        penalty, logs = reg.penalty(head, step)
        torch.testing.assert_close(penalty, factor * full)
        assert logs["kl_weight"] == factor


def test_free_bits_clamp_each_dimension_s_batch_mean():
    terms = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # dimension means 0.2 and 3.0
    torch.testing.assert_close(free_bits_kl(terms, 0.5), torch.tensor(0.5 + 3.0))
    reg = KLRegularizer(size=3, prior=StandardNormalPrior(size=3), head="gaussian", free_bits=100.0)
    penalty, logs = reg.penalty(gaussian_head(), 0)
    torch.testing.assert_close(penalty, torch.tensor(300.0))
    assert logs["kl"] < 300  # the logged KL is the true one


def test_gan_losses_at_an_undecided_discriminator():
    zero = torch.zeros(8)
    torch.testing.assert_close(gan_discriminator_loss(zero, zero), torch.tensor(2 * math.log(2)))
    torch.testing.assert_close(gan_generator_loss(zero), torch.tensor(math.log(2)))
    # a confident, right discriminator has a small loss; its generator a large one
    assert gan_discriminator_loss(zero + 10, zero - 10) < 1e-3 and gan_generator_loss(zero - 10) > 9


def test_r1_penalty_of_a_linear_discriminator_is_its_squared_weight_norm():
    w = torch.tensor([3.0, -4.0])
    real = torch.randn(5, 2, requires_grad=True)
    torch.testing.assert_close(r1_penalty(real @ w, real), torch.tensor(25.0))


def test_r1_under_fp16_takes_its_gradient_at_the_loss_scale():
    # A discriminator whose input gradients (~1e-8) flush to zero in fp16: unscaled, R1 is 0 under
    # fp16 autocast; at fp16 training's loss scale it is fp32's value (PyTorch's AMP gradient-penalty recipe).
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        net[0].weight.mul_(1e-2)
        net[2].weight.mul_(1e-4)
    real = torch.randn(16, 2).requires_grad_()

    def penalty(amp: bool, scale: float) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp), loss_scale(scale):
            return r1_penalty(net(real).squeeze(-1), real)

    exact = penalty(False, 1.0)
    assert exact > 0 and penalty(True, 1.0) == 0
    torch.testing.assert_close(penalty(True, 2.0**16), exact, rtol=0.01, atol=0)
    torch.testing.assert_close(penalty(False, 2.0**16), exact, rtol=1e-5, atol=0)  # in fp32 the scale changes nothing


def test_gradient_penalty_is_added_in_training_and_skipped_without_grad():
    torch.manual_seed(0)
    reg = AdversarialRegularizer(size=2, prior=StandardNormalPrior(size=2), head="deterministic", discriminator=[8], gradient_penalty=1.0)
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    loss, logs = reg.discriminator_loss(real, fake)
    torch.testing.assert_close(loss.detach(), logs["d_loss"] + logs["r1"])
    loss.backward()
    with torch.no_grad():
        _, logs = reg.discriminator_loss(real, fake)
    assert "r1" not in logs


def test_adversarial_regularizer_refuses_a_real_head_for_a_one_hot_prior():
    with pytest.raises(ValueError, match="simplex"):
        AdversarialRegularizer(size=3, prior=CategoricalPrior(size=3), head="gaussian")


def test_adversarial_game_moves_far_codes_to_the_prior():
    """Codes start at mean (4, -3) with covariance diag(0.09, 2.25); after 400 steps of
    discriminator / generator updates their moments are close to N(0, I)'s."""
    torch.manual_seed(0)
    encoder = nn.Linear(2, 2)
    with torch.no_grad():
        encoder.weight.copy_(torch.diag(torch.tensor([0.3, 1.5])))
        encoder.bias.copy_(torch.tensor([4.0, -3.0]))
    prior = StandardNormalPrior(size=2)
    reg = AdversarialRegularizer(size=2, prior=prior, head="deterministic", discriminator=[64, 64])
    d_opt = torch.optim.Adam(reg.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    g_opt = torch.optim.Adam(encoder.parameters(), lr=2e-2, betas=(0.5, 0.999))
    for _ in range(400):
        x = torch.randn(256, 2)
        d_opt.zero_grad()
        reg.discriminator_loss(prior.sample(256), encoder(x).detach())[0].backward()
        d_opt.step()
        g_opt.zero_grad()
        reg.generator_loss(encoder(x))[0].backward()
        g_opt.step()
    with torch.no_grad():
        z = encoder(torch.randn(20000, 2))
    assert z.mean(0).abs().max() < 0.25, z.mean(0)
    assert (torch.cov(z.T) - torch.eye(2)).abs().max() < 0.3, torch.cov(z.T)


def test_batch_features_let_the_discriminator_see_a_batch_that_crowds_one_category():
    """Known answer: with the batch mean as a feature, a discriminator can separate a batch of
    one repeated one-hot code from uniform one-hot prior samples although every single code is
    a valid prior sample; without it, the two are the same examples and it cannot."""
    torch.manual_seed(0)
    k, b = 4, 64
    prior = CategoricalPrior(size=k)
    crowded = F.one_hot(torch.zeros(b, dtype=torch.long), k).float()  # every code is category 0
    final = {}
    for batch_features in (False, True):
        reg = AdversarialRegularizer(size=k, prior=prior, head="categorical", discriminator=[32], batch_features=batch_features)
        opt = torch.optim.Adam(reg.discriminator.parameters(), lr=1e-2)
        for _ in range(300):
            real = torch.cat([crowded[: b // k], prior.sample(b - b // k)])  # real batches hold category 0 too
            opt.zero_grad()
            loss, logs = reg.discriminator_loss(real, crowded)
            loss.backward()
            opt.step()
        # how the discriminator scores category-0 codes coming as a crowded batch
        with torch.no_grad():
            final[batch_features] = torch.sigmoid(reg.discriminator(reg.features(crowded))).mean().item()
    assert final[True] < 0.05  # the crowded batch is recognised as fake
    assert final[False] > 0.1  # per example, category 0 looks like some real samples
    # the generator's gradient reaches every code through the batch mean
    reg = AdversarialRegularizer(size=k, prior=prior, head="categorical", discriminator=[8], batch_features=True)
    codes = torch.full((b, k), 1.0 / k, requires_grad=True)
    reg.generator_loss(codes)[0].backward()
    assert codes.grad is not None and torch.isfinite(codes.grad).all()
    with pytest.raises(ValueError, match="as many prior samples as codes"):
        reg.discriminator_loss(prior.sample(3), crowded)


def test_a_generator_weight_needs_the_joint_update():
    prior = StandardNormalPrior(size=2)
    assert AdversarialRegularizer(size=2, prior=prior, head="deterministic", discriminator=[4]).joint_weight is None
    assert AdversarialRegularizer(size=2, prior=prior, head="deterministic", discriminator=[4], generator="joint").joint_weight == 1.0
    joint = AdversarialRegularizer(size=2, prior=prior, head="deterministic", discriminator=[4], generator="joint", generator_weight=0.5)
    assert joint.joint_weight == 0.5
    with pytest.raises(ValueError, match='generator = "joint"'):
        AdversarialRegularizer(size=2, prior=prior, head="deterministic", discriminator=[4], generator_weight=0.5)
