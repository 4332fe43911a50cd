"""The one Model: phases follow the parts, steps cover every parameter once, the losses are the
ELBO / GAN / cross-entropy they claim, and sampling, encoding and wrapping work for every family."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import gentk
from gentk.data import Batch
from gentk.errors import GentkError
from gentk.model import Model, build_model
from gentk.recipe import recipe_from_dict

SHAPE = (1, 8, 8)
GAUSS_KL = {"size": 3, "head": "gaussian", "regularizer": {"name": "kl"}}
CAT_ADV = {"size": 4, "head": "categorical", "prior": {"name": "categorical"}, "regularizer": {"name": "adversarial", "discriminator": [8]}}
GAUSS_ADV = {"size": 2, "head": "deterministic", "regularizer": {"name": "adversarial", "discriminator": [8]}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def plugins():
    return gentk.load_plugins(autoload=False)


def make(plugins, latents, *, labeled=0, decoder=None, encoder=True) -> Model:
    tree = {
        "name": "t",
        "data": {"name": "synthetic", "labeled": labeled},
        "model": {"latents": latents, "decoder": decoder or {"name": "bernoulli", "hidden": [8]}},
    }
    if encoder:
        tree["model"]["encoder"] = {"name": "mlp", "hidden": [8]}
    torch.manual_seed(0)
    return build_model(recipe_from_dict(tree, plugins=plugins), SHAPE, plugins)


def batch(n=6, seed=0, classes=4):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.bernoulli(torch.full((n, *SHAPE), 0.5), generator=g), torch.randint(0, classes, (n,), generator=g))


def test_phases_follow_the_parts(plugins):
    assert make(plugins, {"z": GAUSS_KL}).phases() == ["reconstruction"]  # VAE
    assert make(plugins, {"y": CAT_ADV}).phases() == ["reconstruction", "regularization"]  # categorical PixelGAN / AAE
    semi = make(plugins, {"y": {**CAT_ADV, "supervised": True}, "z": GAUSS_ADV}, labeled=20)
    assert semi.phases() == ["reconstruction", "regularization", "supervised"]
    assert [s.name for s in semi.training_steps()] == [
        "reconstruction",
        "discriminator.y",
        "generator.y",
        "discriminator.z",
        "generator.z",
        "supervised.y",
    ]
    assert make(plugins, {}, encoder=False).phases() == ["reconstruction"]  # a plain decoder


def test_steps_update_every_parameter_and_name_their_parts(plugins):
    model = make(plugins, {"y": {**CAT_ADV, "supervised": True}, "z": GAUSS_ADV}, labeled=20)
    steps = {s.name: s for s in model.training_steps()}
    assert set(steps["reconstruction"].parts) == {"encoder", "decoder"}
    assert set(steps["discriminator.y"].parts) == {"discriminator.y"}
    assert set(steps["generator.z"].parts) == {"encoder"} and set(steps["supervised.y"].parts) == {"encoder"}
    updated = {id(p) for s in steps.values() for p in s.parameters()}
    assert updated == {id(p) for p in model.parameters()}
    assert set(model.parts()) == {"encoder", "decoder", "discriminator.y", "discriminator.z"}
    # a discriminator step never touches the encoder, a generator step never the discriminator
    assert not {id(p) for p in steps["discriminator.y"].parameters()} & {id(p) for p in model.encoder.parameters()}


def test_reconstruction_loss_of_a_vae_is_the_negative_elbo(plugins):
    model = make(plugins, {"z": GAUSS_KL})
    b = batch()
    torch.manual_seed(1)
    loss, logs = model.reconstruction_loss(b)
    torch.manual_seed(1)
    elbo = model.elbo(b.x)
    assert elbo.shape == (6,)
    torch.testing.assert_close(loss, -elbo.mean())
    assert float(logs["loss"]) == pytest.approx(float(logs["nll"]) + float(logs["kl.z"]), rel=1e-5)  # logged values may be tensors


def test_log_prob_and_elbo_exist_only_where_defined(plugins):
    plain = make(plugins, {}, encoder=False)
    x = batch().x
    torch.testing.assert_close(plain.log_prob(x), torch.full((6,), -64 * math.log(2)))  # untrained: every pixel p = 1/2
    torch.testing.assert_close(plain.elbo(x), plain.log_prob(x))
    with pytest.raises(GentkError, match="intractable"):
        make(plugins, {"z": GAUSS_KL}).log_prob(x)
    with pytest.raises(GentkError, match="not KL-regularized"):
        make(plugins, {"y": CAT_ADV}).elbo(x)
    with pytest.raises(GentkError, match="no encoder"):
        plain.encode(x)


def test_losses_are_finite_and_training_moves_them(plugins):
    model = make(plugins, {"y": {**CAT_ADV, "supervised": True}, "z": GAUSS_KL}, labeled=20)
    steps = model.training_steps()
    optims = [torch.optim.Adam(s.parameters(), lr=1e-2) for s in steps]
    b = batch(classes=4)
    first = {}
    for _ in range(15):
        for step, opt in zip(steps, optims):
            opt.zero_grad()
            loss, logs = step.loss(b)
            assert torch.isfinite(loss)
            loss.backward()
            opt.step()
            first.setdefault(step.name, loss.item())
    assert model.eval_losses(b)["reconstruction/nll"] < first["reconstruction"]
    assert model.eval_losses(b)["supervised.y/xent"] < first["supervised.y"]


def test_training_counts_steps_for_warm_up_but_evaluation_does_not(plugins):
    model = make(plugins, {"z": {**GAUSS_KL, "regularizer": {"name": "kl", "warmup": 4}}})
    b = batch()
    weights = [model.reconstruction_loss(b)[1]["kl_weight.z"] for _ in range(3)]
    assert weights == [0.0, 0.25, 0.5] and int(model.step) == 3
    logs = model.eval_losses(b)
    assert logs["reconstruction/kl_weight.z"] == 0.75 and int(model.step) == 3
    assert "step" in model.state_dict()  # restored with the weights from a checkpoint


def test_encode_sample_and_reconstruct(plugins):
    model = make(plugins, {"y": CAT_ADV, "z": GAUSS_KL}).eval()
    x = batch().x
    codes = model.encode(x)
    assert codes["y"].shape == (6, 4) and codes["z"].shape == (6, 3)
    torch.testing.assert_close(model.encode(x)["z"], codes["z"])  # the mean, not a sample
    assert model.sample(5).shape == (5, *SHAPE)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.testing.assert_close(model.sample(5, generator=g()), model.sample(5, generator=g()))
    assert model.reconstruct(x).shape == x.shape


def test_sample_per_category_sets_one_category_per_row(plugins, monkeypatch):
    model = make(plugins, {"z": GAUSS_KL, "y": CAT_ADV})
    seen = {}

    def spy(n, c, **kwargs):
        seen["c"] = c
        return torch.zeros(n, *SHAPE)

    monkeypatch.setattr(model.decoder, "sample", spy)
    assert model.sample_per_category(3).shape == (12, *SHAPE)
    one_hot = seen["c"][:, 3:]  # z (size 3) comes first: latents are concatenated in recipe order
    assert one_hot.argmax(-1).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    torch.testing.assert_close(one_hot.sum(-1), torch.ones(12))
    with pytest.raises(GentkError, match="not a categorical latent"):
        model.sample_per_category(2, "z")


def test_wrapped_parts_are_called_through_their_wrappers(plugins):
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
            self.calls = 0

        def forward(self, *args):
            self.calls += 1
            return self.module(*args)

    model = make(plugins, {"y": CAT_ADV})
    originals = model.parts()
    model.wrap_parts(lambda name, part: Wrapper(part))
    for step in model.training_steps():
        step.loss(batch())[0].backward()
    assert all(isinstance(p, Wrapper) and p.calls > 0 for p in model.parts().values())
    model.unwrap_parts()
    assert model.parts() == originals


def test_head_and_prior_must_agree_when_built_from_parts():
    from gentk.decoders import bernoulli_decoder
    from gentk.encoders import mlp_encoder
    from gentk.priors import CategoricalPrior
    from gentk.recipe import LatentSpec
    from gentk.regularizers import NoRegularizer

    latents = {"y": LatentSpec(size=3, head="gaussian")}
    parts = dict(
        encoder=mlp_encoder(input_shape=SHAPE, latents=latents, hidden=[4]),
        decoder=bernoulli_decoder(image_shape=SHAPE, cond_size=3, hidden=[4]),
        latents=latents,
        priors={"y": CategoricalPrior(size=3)},
        regularizers={"y": NoRegularizer(size=3, prior=None, head="gaussian")},
    )
    with pytest.raises(GentkError, match="latent 'y': its prior samples one-hot vectors"):
        Model(**parts)


def test_components_do_not_know_the_model():
    source = Path(gentk.__file__).parent
    for module in ("encoders", "priors", "regularizers", "decoders", "nn", "distributions"):
        text = (source / f"{module}.py").read_text()
        assert "gentk.model" not in text and "import Model" not in text, module


def test_docs_document_every_option_and_their_examples_run(plugins):
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    for kind in ("encoders", "priors", "regularizers", "decoders"):
        for entry in plugins.registries[kind]:
            if entry.plugin.startswith("gentk.") and entry.name != "pixelcnn":
                assert f"**{kind[:-1]} `{entry.name}`**" in text, entry.name
                for name, *_ in gentk.recipe.option_docs(entry.config):
                    assert f"| `{name}` |" in text, (entry.name, name)
    for code in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        exec(compile(code.replace('"recipes/', f'"{Path(__file__).resolve().parents[1]}/recipes/'), "docs/models.md", "exec"), {})


def far_codes(plugins, regularizer: dict) -> Model:
    """A linear encoder of 2-D points whose codes start at mean (4, -3), covariance diag(0.09, 2.25)."""
    tree = {
        "name": "toy",
        "data": {"name": "synthetic"},
        "model": {
            "encoder": {"name": "mlp", "hidden": []},
            "latents": {"z": {"size": 2, "head": "deterministic", "regularizer": regularizer}},
            "decoder": {"name": "gaussian", "hidden": [4]},
        },
    }
    torch.manual_seed(0)
    model = build_model(recipe_from_dict(tree, plugins=plugins), (2, 1, 1), plugins)
    with torch.no_grad():
        model.encoder.heads["z"].linear.weight.copy_(torch.diag(torch.tensor([0.3, 1.5])))
        model.encoder.heads["z"].linear.bias.copy_(torch.tensor([4.0, -3.0]))
    return model


def train_on_points(steps, lrs, n: int = 400) -> None:
    """`n` rounds of `steps` (each with its Adam at its rate in `lrs`) on batches of N(0, I) points."""
    optimizers = [torch.optim.Adam(s.parameters(), lr=lr, betas=(0.5, 0.999)) for s, lr in zip(steps, lrs)]
    for _ in range(n):
        b = Batch(torch.randn(256, 2, 1, 1), torch.zeros(256, dtype=torch.long))
        for step, opt in zip(steps, optimizers):
            opt.zero_grad()
            step.loss(b)[0].backward()
            opt.step()


def test_the_model_s_regularization_phase_pulls_far_codes_to_the_prior(plugins):
    """`far_codes`: 400 steps of the model's own regularization-phase steps bring them close to N(0, I)."""
    model = far_codes(plugins, {"name": "adversarial", "discriminator": [64, 64]})
    steps = [s for s in model.training_steps() if s.phase == "regularization"]
    assert [s.name for s in steps] == ["discriminator.z", "generator.z"]
    train_on_points(steps, (1e-3, 2e-2))
    z = model.encode(torch.randn(20000, 2, 1, 1))["z"].detach()
    assert z.mean(0).abs().max() < 0.25, z.mean(0)
    assert (torch.cov(z.T) - torch.eye(2)).abs().max() < 0.3, torch.cov(z.T)


def test_a_joint_adversary_s_generator_loss_joins_the_reconstruction_step_with_its_weight(plugins):
    """generator = "joint": no generator step, and the reconstruction step's gradient is the NLL's
    plus the weight times the generator loss's, for every encoder and decoder parameter."""
    joint = {**GAUSS_ADV, "regularizer": {**GAUSS_ADV["regularizer"], "generator": "joint", "generator_weight": 0.3}}
    model = make(plugins, {"z": joint})
    steps = model.training_steps()
    assert [s.name for s in steps] == ["reconstruction", "discriminator.z"]
    assert set(steps[0].parts) == {"encoder", "decoder"}
    b = batch()
    params = steps[0].parameters()

    def grads(loss):
        return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)

    loss, logs = steps[0].loss(b)
    code = model.encoder(b.x)["z"]["code"]
    nll = -model.decoder(b.x, code).mean()
    fool, _ = model.regularizers["z"].generator_loss(code)
    assert torch.allclose(loss, nll + 0.3 * fool) and torch.allclose(logs["g_loss.z"], fool)
    for got, from_nll, from_fool in zip(grads(loss), grads(nll), grads(fool)):
        expected = from_nll + 0.3 * (from_fool if from_fool is not None else 0.0)  # the decoder gets nothing from the generator loss
        assert torch.allclose(got, expected, atol=1e-6)
    assert any(g is not None and g.abs().sum() > 0 for g in grads(fool))  # the generator loss does reach the encoder
    separate = make(plugins, {"z": GAUSS_ADV})
    assert [s.name for s in separate.training_steps()] == ["reconstruction", "discriminator.z", "generator.z"]


def test_joint_training_pulls_far_codes_to_the_prior(plugins):
    """`far_codes` reach N(0, I) through the joint reconstruction step and the discriminator step
    (the reconstruction alone would leave them where they are: the decoder undoes any shift)."""
    model = far_codes(plugins, {"name": "adversarial", "discriminator": [64, 64], "generator": "joint"})
    steps = model.training_steps()
    points = torch.randn(20000, 2, 1, 1)
    before = gentk.metrics.mmd_rbf(model.encode(points[:2000])["z"].detach(), torch.randn(2000, 2))
    train_on_points(steps, (2e-2, 1e-3))
    z = model.encode(points)["z"].detach()
    after = gentk.metrics.mmd_rbf(z[:2000], torch.randn(2000, 2))
    assert after < 0.05 * before, (before, after)
    assert z.mean(0).abs().max() < 0.5, z.mean(0)
    assert (torch.cov(z.T) - torch.eye(2)).abs().max() < 0.5, torch.cov(z.T)


def test_a_head_that_cannot_suit_its_prior_or_regularizer_is_a_recipe_error(plugins):
    from gentk.errors import RecipeError

    def recipe(latent):
        tree = {
            "name": "t",
            "data": {"name": "synthetic"},
            "model": {"encoder": {"name": "mlp"}, "latents": {"y": latent}, "decoder": {"name": "bernoulli"}},
        }
        return recipe_from_dict(tree, plugins=plugins)

    with pytest.raises(RecipeError, match=r"model\.latents\.y\.head: prior 'categorical' samples one-hot"):
        recipe({"size": 3, "head": "gaussian", "prior": {"name": "categorical"}})
    with pytest.raises(RecipeError, match=r"model\.latents\.y\.head: regularizer 'kl' needs a head among 'gaussian', 'categorical'"):
        recipe({"size": 3, "head": "deterministic", "regularizer": {"name": "kl"}})
    recipe({"size": 3, "head": "categorical", "prior": {"name": "categorical"}, "regularizer": {"name": "kl"}})


def test_only_a_categorical_head_can_be_supervised_in_a_recipe_or_in_python(plugins):
    from gentk.errors import RecipeError
    from gentk.recipe import LatentSpec

    with pytest.raises(ValueError, match="only a categorical head can be supervised by labels; this latent's head is 'gaussian'"):
        LatentSpec(size=3, head="gaussian", supervised=True)
    tree = {
        "name": "t",
        "data": {"name": "synthetic", "labeled": 10},
        "model": {"encoder": {"name": "mlp"}, "latents": {"y": {"size": 3, "supervised": True}}, "decoder": {"name": "bernoulli"}},
    }
    with pytest.raises(RecipeError, match=r"model\.latents\.y\.supervised: only a categorical head"):
        recipe_from_dict(tree, plugins=plugins)


def test_iwae_approaches_the_exact_log_likelihood_of_a_tiny_model(plugins):
    """A 1-D latent and a 2-pixel image: log p(x) = log integral p(x|z) N(z) dz by quadrature.
    The ELBO lies below it, the importance-weighted bound with k = 4000 within 0.03 nats."""
    tree = {
        "name": "tiny",
        "data": {"name": "synthetic"},
        "model": {
            "encoder": {"name": "mlp", "hidden": [4]},
            "latents": {"z": {"size": 1, "head": "gaussian", "regularizer": {"name": "kl"}}},
            "decoder": {"name": "bernoulli", "hidden": [8]},
        },
    }
    torch.manual_seed(0)
    model = build_model(recipe_from_dict(tree, plugins=plugins), (1, 1, 2), plugins).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(4)  # make p(x|z) depend strongly on z
        x = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
        grid = torch.linspace(-8, 8, 4001)
        log_joint = torch.stack([model.decoder(xi.expand(len(grid), 1, 1, 2), grid[:, None]) for xi in x]) + model.priors["z"].log_prob(grid[:, None])
        exact = torch.logsumexp(log_joint, dim=1) + math.log(grid[1] - grid[0])
        torch.manual_seed(1)
        elbo = torch.stack([model.elbo(x) for _ in range(2000)]).mean(0)
        bound = model.iwae(x, samples=4000)
    assert (elbo < exact - 0.01).all(), (elbo, exact)
    torch.testing.assert_close(bound, exact, atol=0.03, rtol=0)
    with pytest.raises(GentkError, match="a gaussian head on every latent"):
        make(plugins, {"y": CAT_ADV}).iwae(x)


def test_importance_samples_are_drawn_on_the_generators_device(plugins, generators_like_cuda):
    # a CPU generator for a model on another device (tests/conftest.py)
    model = make(plugins, {"z": GAUSS_KL}).to("meta")
    log_w = model.log_importance_weights(batch().x.to("meta"), 3, generator=torch.Generator().manual_seed(0))
    assert log_w.shape == (3, 6) and log_w.device.type == "meta"


def test_a_part_that_cannot_be_built_is_a_user_error_naming_its_table(plugins):
    tree = {
        "name": "t",
        "data": {"name": "synthetic"},
        "model": {"encoder": {"name": "conv", "channels": [2, 2, 2, 2, 2]}, "latents": {"z": GAUSS_KL}, "decoder": {"name": "bernoulli"}},
    }
    with pytest.raises(GentkError, match=r"model\.encoder \(conv\) for images \(1, 8, 8\): 5 stride-2 convolutions"):
        build_model(recipe_from_dict(tree, plugins=plugins), SHAPE, plugins)
    tree["model"] = {
        "encoder": {"name": "mlp"},
        "latents": {"z": {"size": 1, "prior": {"name": "gaussian_mixture"}}},
        "decoder": {"name": "bernoulli"},
    }
    with pytest.raises(GentkError, match=r"model\.latents\.z: a mixture of Gaussians on a circle needs a latent of size >= 2"):
        build_model(recipe_from_dict(tree, plugins=plugins), SHAPE, plugins)
