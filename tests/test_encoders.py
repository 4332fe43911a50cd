"""Encoders: head outputs per latent kind, the simplex for categorical heads, input noise in training only."""

from __future__ import annotations

import pytest
import torch

from gentk.encoders import conv_encoder, mlp_encoder
from gentk.recipe import LatentSpec

LATENTS = {"y": LatentSpec(size=5, head="categorical"), "z": LatentSpec(size=3, head="gaussian"), "w": LatentSpec(size=2, head="deterministic")}


@pytest.fixture(params=["mlp", "conv"])
def encoder(request):
    torch.manual_seed(0)
    if request.param == "mlp":
        return mlp_encoder(input_shape=(1, 12, 12), latents=LATENTS, hidden=[16])
    return conv_encoder(input_shape=(1, 12, 12), latents=LATENTS, channels=[4, 8], hidden=[16])


def test_one_output_per_latent_with_the_head_s_tensors(encoder):
    out = encoder(torch.rand(6, 1, 12, 12))
    assert set(out) == {"y", "z", "w"}
    assert set(out["y"]) == {"code", "logits"} and out["y"]["code"].shape == (6, 5)
    assert set(out["z"]) == {"code", "mean", "logvar"} and out["z"]["mean"].shape == (6, 3)
    assert set(out["w"]) == {"code"} and out["w"]["code"].shape == (6, 2)


def test_categorical_head_outputs_points_on_the_simplex(encoder):
    out = encoder(torch.rand(32, 1, 12, 12) * 10)["y"]
    assert (out["code"] >= 0).all()
    torch.testing.assert_close(out["code"].sum(-1), torch.ones(32))
    torch.testing.assert_close(out["code"], out["logits"].softmax(-1))


def test_gaussian_head_reparameterizes_around_its_mean(encoder):
    x = torch.rand(1, 1, 12, 12).expand(4000, 1, 12, 12)
    out = encoder(x)["z"]
    eps = (out["code"] - out["mean"]) / torch.exp(0.5 * out["logvar"])
    assert abs(eps.mean().item()) < 0.05 and abs(eps.std().item() - 1) < 0.05
    out["code"].sum().backward()  # the sample is differentiable in the encoder's weights
    assert all(p.grad is not None for p in encoder.heads["z"].parameters())


def test_input_noise_acts_in_training_only():
    torch.manual_seed(0)
    enc = mlp_encoder(input_shape=(1, 4, 4), latents={"w": LatentSpec(size=2)}, hidden=[8], input_noise=0.5)
    x = torch.rand(3, 1, 4, 4)
    a, b = enc(x)["w"]["code"], enc(x)["w"]["code"]
    assert not torch.allclose(a, b)  # z = f(x, n): a stochastic encoder
    enc.eval()
    torch.testing.assert_close(enc(x)["w"]["code"], enc(x)["w"]["code"])


@pytest.mark.parametrize("build", [mlp_encoder, conv_encoder])
def test_batch_norm_normalizes_each_hidden_unit_over_the_batch(build):
    torch.manual_seed(0)
    kwargs = {"channels": [4, 8]} if build is conv_encoder else {}
    encoder = build(input_shape=(1, 12, 12), latents=LATENTS, hidden=[16], batch_norm=True, **kwargs)
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == (3 if build is conv_encoder else 1)  # one per hidden layer
    # In training, each hidden unit's pre-activation has batch mean 0 and variance 1.
    seen = []
    norms[-1].register_forward_hook(lambda module, inputs, output: seen.append(output))
    x = torch.rand(64, 1, 12, 12) * 3 + 1
    encoder.train()(x)
    assert torch.allclose(seen[-1].mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(seen[-1].var(0, unbiased=False), torch.ones(16), atol=1e-3)
    # The running statistics are part of the state (checkpoints and resume carry them); in
    # evaluation one example's code does not depend on the rest of the batch.
    assert any(key.endswith("running_mean") for key in encoder.state_dict())
    encoder.eval()
    alone, together = encoder(x[:1])["y"]["code"], encoder(x)["y"]["code"][:1]
    assert torch.allclose(alone, together, atol=1e-6)


def test_conv_encoder_refuses_more_downsamplings_than_the_image_allows():
    with pytest.raises(ValueError, match="shrink"):
        conv_encoder(input_shape=(1, 4, 4), latents={"w": LatentSpec(size=2)}, channels=[2, 2, 2, 2])


def test_conv_encoder_halves_28_to_7_with_the_default_kernel():
    enc = conv_encoder(input_shape=(1, 28, 28), latents={"w": LatentSpec(size=2)}, channels=[2, 3], hidden=[])
    assert enc.heads["w"].linear.in_features == 3 * 7 * 7


def test_registered_with_validated_options():
    import gentk
    from gentk.errors import RecipeError

    plugins = gentk.load_plugins()
    assert {"mlp", "conv"} <= set(plugins.registries.encoders.names())
    tree = {
        "name": "t",
        "data": {"name": "synthetic"},
        "model": {"encoder": {"name": "mlp", "hiden": [3]}, "latents": {"z": {"size": 2}}, "decoder": {"name": "bernoulli"}},
    }
    with pytest.raises(RecipeError, match="Did you mean 'hidden'"):
        gentk.recipe.recipe_from_dict(tree, plugins=plugins)
