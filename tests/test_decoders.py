"""Factorized decoders: exact likelihoods (known answers, normalization), shapes, samples and errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import distributions as D

from gentk.decoders import bernoulli_decoder, gaussian_decoder, logistic_decoder
from gentk.distributions import discretized_logistic_log_prob
from gentk.errors import GentkError

SHAPE = (2, 6, 5)  # odd sizes exercise the deconv body's crop
BUILDERS = {"bernoulli": bernoulli_decoder, "gaussian": gaussian_decoder, "logistic": logistic_decoder}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def data_for(kind, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "bernoulli":
        return torch.bernoulli(torch.full((n, *SHAPE), 0.5), generator=g)
    return torch.randint(0, 256, (n, *SHAPE), generator=g).float() / 255


def test_discretized_logistic_sums_to_one_over_the_bins():
    levels = torch.linspace(-1, 1, 256)
    mean = torch.tensor([[-1.2], [0.0], [0.37], [0.99]])
    for log_scale in (-6.0, -3.0, 0.0, 1.0):
        p = discretized_logistic_log_prob(levels, mean, torch.full_like(mean, log_scale)).exp().sum(-1)
        torch.testing.assert_close(p, torch.ones(4), atol=2e-3, rtol=0)


def test_discretized_logistic_known_value_in_a_middle_bin():
    x, mean, log_scale = torch.tensor(0.0), torch.tensor(0.0), torch.tensor(math.log(0.1))
    half = 1 / 255
    expected = torch.sigmoid(torch.tensor(half / 0.1)) - torch.sigmoid(torch.tensor(-half / 0.1))
    torch.testing.assert_close(discretized_logistic_log_prob(x, mean, log_scale), expected.log())


@pytest.mark.parametrize("kind, body", list(itertools.product(BUILDERS, ["mlp", "deconv"])))
def test_log_prob_per_image_and_samples_in_range(kind, body):
    torch.manual_seed(0)
    dec = BUILDERS[kind](image_shape=SHAPE, cond_size=3, body=body, hidden=[8], channels=[4, 4])
    x, c = data_for(kind, 5), torch.randn(5, 3)
    lp = dec(x, c)
    assert lp.shape == (5,) and torch.isfinite(lp).all()
    if kind != "gaussian":  # a probability, not a density
        assert (lp <= 0).all()
    lp.sum().backward()
    assert all(p.grad is not None for p in dec.parameters())
    s = dec.sample(5, c, generator=torch.Generator().manual_seed(1))
    assert s.shape == (5, *SHAPE) and s.min() >= 0 and s.max() <= 1
    torch.testing.assert_close(s, dec.sample(5, c, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(dec.sample(5, c, temperature=0), dec.sample(5, c, temperature=0))


def test_bernoulli_matches_torch_distributions():
    torch.manual_seed(0)
    dec = bernoulli_decoder(image_shape=SHAPE, cond_size=3, hidden=[8])
    x, c = data_for("bernoulli", 4), torch.randn(4, 3)
    logits = dec.body(c, 4)
    expected = D.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(dec(x, c), expected)


def test_gaussian_fixed_variance_matches_torch_distributions():
    torch.manual_seed(0)
    dec = gaussian_decoder(image_shape=SHAPE, cond_size=3, hidden=[8], std=0.2)
    assert not list(dec.likelihood.parameters())  # fixed: nothing to learn
    x, c = data_for("gaussian", 4), torch.randn(4, 3)
    mean = torch.sigmoid(dec.body(c, 4))
    torch.testing.assert_close(dec(x, c), D.Normal(mean, 0.2).log_prob(x).sum((1, 2, 3)))


def test_gaussian_variance_options_set_what_is_learned():
    learned = gaussian_decoder(image_shape=SHAPE, cond_size=3, hidden=[8], variance="learned")
    assert [p.shape for p in learned.likelihood.parameters()] == [(2, 1, 1)]
    predicted = gaussian_decoder(image_shape=SHAPE, cond_size=3, hidden=[8], variance="predicted")
    assert predicted.body.net[0][-1].out_features == 2 * math.prod(SHAPE)


def test_bernoulli_mode_thresholds_the_probabilities():
    dec = bernoulli_decoder(image_shape=(1, 2, 2), cond_size=0)
    with torch.no_grad():
        dec.body.map.copy_(torch.tensor([[[2.0, -2.0], [0.5, -0.1]]]))
    assert dec.sample(1, temperature=0).flatten().tolist() == [1.0, 0.0, 1.0, 0.0]
    freq = dec.sample(20000, generator=torch.Generator().manual_seed(0)).mean(0).flatten()
    torch.testing.assert_close(freq, torch.sigmoid(dec.body.map.flatten()), atol=0.015, rtol=0)


def test_a_bernoulli_decoder_gives_the_mean_images_of_its_samples():
    dec = bernoulli_decoder(image_shape=SHAPE, cond_size=3, hidden=[8])
    c = torch.randn(5, 3)
    x, probs = dec.sample(5, c, generator=torch.Generator().manual_seed(0), return_probs=True)
    assert torch.equal(x, dec.sample(5, c, generator=torch.Generator().manual_seed(0)))  # the same samples as without
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.sigmoid(dec.body(c, 5)))
    assert dec.bernoulli_probs and not gaussian_decoder(image_shape=SHAPE, cond_size=3, hidden=[8]).bernoulli_probs
    with pytest.raises(GentkError, match="only a Bernoulli decoder has"):
        logistic_decoder(image_shape=SHAPE, cond_size=3, hidden=[8]).sample(1, c[:1], return_probs=True)


def test_logistic_samples_lie_on_the_bins():
    dec = logistic_decoder(image_shape=SHAPE, cond_size=2, hidden=[8], bins=16)
    s = dec.sample(3, torch.randn(3, 2))
    torch.testing.assert_close(s * 15, (s * 15).round())


def test_unconditional_decoder_learns_a_map_and_refuses_codes():
    dec = bernoulli_decoder(image_shape=SHAPE, cond_size=0)
    assert dec(data_for("bernoulli", 3)).shape == (3,)
    torch.testing.assert_close(dec(data_for("bernoulli", 1), None), torch.tensor([-math.prod(SHAPE) * math.log(2)]))
    with pytest.raises(ValueError, match="unconditional"):
        dec(data_for("bernoulli", 3), torch.randn(3, 2))


def test_conditional_decoder_checks_the_code_shape():
    dec = logistic_decoder(image_shape=SHAPE, cond_size=3, hidden=[8])
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        dec(data_for("logistic", 2), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        dec.sample(2)
