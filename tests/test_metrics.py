"""Known answers for the paper's metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gentk import metrics as M


def one_hot(clusters, k):
    return np.eye(k)[np.asarray(clusters)]


def test_perfect_clustering_scores_zero_under_every_protocol():
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    probs = one_hot(labels, 3) * 0.9 + 0.1 / 3
    assert M.clustering_errors(probs, labels, probs, labels) == {"aae": 0.0, "majority": 0.0, "hungarian": 0.0}


def test_permuted_clusters_are_still_perfect():
    labels = np.array([0, 1, 2, 0, 1, 2, 2, 1])
    clusters = (labels + 1) % 3  # cluster names are arbitrary
    probs = one_hot(clusters, 3)
    errors = M.clustering_errors(probs, labels, probs, labels)
    assert errors == {"aae": 0.0, "majority": 0.0, "hungarian": 0.0}


def test_merged_clusters_cost_exactly_the_merged_class():
    # classes 0 and 1 both land in cluster 0; class 2 in cluster 1; cluster 2 is empty
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])  # 3 of class 0, 3 of class 1, 2 of class 2
    clusters = np.array([0, 0, 0, 0, 1, 1, 0, 0])
    probs = one_hot(clusters, 3)
    errors = M.clustering_errors(probs, labels, probs, labels)
    # majority: cluster 0 takes label 0 (tie 3-3 broken toward the lower label), so class 1 is wrong: 3/8
    assert errors["majority"] == pytest.approx(3 / 8)
    assert errors["hungarian"] == pytest.approx(3 / 8)


def test_aae_protocol_uses_the_most_confident_validation_example():
    # cluster 0's most confident validation example has label 7, so every test point in it is called 7
    val_probs = np.array([[0.6, 0.4], [0.99, 0.01], [0.2, 0.8]])
    val_labels = np.array([3, 7, 5])
    assert list(M.cluster_labels_aae(val_probs, val_labels)) == [7, 5]
    test_probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    test_labels = np.array([7, 3, 5])
    assert M.clustering_errors(val_probs, val_labels, test_probs, test_labels)["aae"] == pytest.approx(1 / 3)


def test_more_clusters_than_classes():
    # 4 clusters, 2 classes: each class split over two clusters
    labels = np.array([0, 0, 1, 1])
    clusters = np.array([0, 1, 2, 3])
    probs = one_hot(clusters, 4)
    errors = M.clustering_errors(probs, labels, probs, labels)
    assert errors["aae"] == 0.0 and errors["majority"] == 0.0
    assert errors["hungarian"] == pytest.approx(0.5)  # one cluster per class can be matched


def test_bits_per_dim_of_a_fair_coin_model():
    dims = 784
    nll = dims * math.log(2)  # every pixel has probability 1/2
    assert M.bits_per_dim(nll, dims) == pytest.approx(1.0, abs=1e-12)
    assert M.bits_per_dim(dims * math.log(256), dims) == pytest.approx(8.0, abs=1e-12)


def test_gaussian_moment_distance_is_small_for_gaussian_codes_and_large_otherwise():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 2, generator=g)
    good = M.gaussian_moment_distance(z)
    assert good["mean_norm"] < 0.03 and good["cov_dist"] < 0.03 and good["gaussian_kl"] < 0.01
    bad = M.gaussian_moment_distance(3 * z + 5)
    assert bad["mean_norm"] > 6 and bad["gaussian_kl"] > 10


def test_effective_clusters_known_answers():
    assert M.effective_clusters(one_hot([0, 1, 2, 3] * 5, 30)) == pytest.approx(4.0)  # 4 of 30 used equally
    assert M.effective_clusters(one_hot([7] * 9, 30)) == pytest.approx(1.0)  # a collapse
    assert M.effective_clusters(one_hot([0, 0, 0, 1], 2)) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_aae_protocol_on_merged_clusters():
    # same merge as above; cluster 0's most confident example (the first, by argmax's tie rule) is a 0,
    # cluster 1's is a 2, and the empty cluster 2 takes the first example's label: class 1 is all wrong
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    probs = one_hot(np.array([0, 0, 0, 0, 1, 1, 0, 0]), 3)
    assert M.clustering_errors(probs, labels, probs, labels)["aae"] == pytest.approx(3 / 8)


def test_iwae_bound_of_equal_weights_is_the_weight():
    log_w = torch.full((7, 3), -2.5)
    assert torch.allclose(M.iwae_bound(log_w), torch.full((3,), -2.5, dtype=torch.float64))
    # two weights 1 and 3: log of their mean, 2
    assert M.iwae_bound(torch.log(torch.tensor([[1.0], [3.0]]))).item() == pytest.approx(math.log(2.0))


def test_mmd_is_near_zero_for_one_distribution_and_large_for_two():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, 3, generator=g), torch.randn(400, 3, generator=g)
    assert abs(M.mmd_rbf(a, b)) < 0.01
    assert M.mmd_rbf(a, b + 2.0) > 0.5
    assert M.mmd_rbf(a, 0.3 * b) > 10 * abs(M.mmd_rbf(a, b))


def test_the_tensor_mmd_is_the_metric_s_value_and_a_regularizer_can_minimise_it():
    from gentk.distributions import mmd_rbf

    g = torch.Generator().manual_seed(2)
    prior, codes = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + 1.5
    assert M.mmd_rbf(prior, codes) == float(mmd_rbf(prior.double(), codes.double()))
    shift = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([shift], lr=2.0)
    for _ in range(50):  # gradient descent on the MMD moves the codes onto the prior
        optimizer.zero_grad()
        mmd_rbf(prior, codes + shift).backward()
        optimizer.step()
    assert (codes.mean(0) + shift.detach()).abs().max() < 0.3, shift


def test_project_2d_keeps_2d_codes_and_finds_the_main_axes():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 2, generator=g)
    assert torch.equal(M.project_2d(z), z.double())
    # 5-D codes that vary along two axes only: the projection keeps their spread
    wide = torch.cat([10 * z, 0.01 * torch.randn(500, 3, generator=g)], 1)
    assert M.project_2d(wide).std(0).min() > 5


def test_mean_std():
    assert M.mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert M.mean_std([4.0]) == (4.0, 0.0)


# --------------------------------------------------------------------------- registered metrics on models

import gentk  # noqa: E402
from gentk.data import build_data  # noqa: E402
from gentk.errors import GentkError  # noqa: E402
from gentk.model import build_model  # noqa: E402
from gentk.recipe import recipe_from_dict  # noqa: E402

SYNTHETIC = {"name": "synthetic", "binarize": "dynamic", "batch_size": 25, "classes": 4, "train": 200, "test": 60}


@pytest.fixture(scope="module")
def plugins():
    return gentk.load_plugins(autoload=False)


def tiny(plugins, latents, decoder=None, encoder=None):
    tree = {"name": "tiny", "data": dict(SYNTHETIC), "model": {"decoder": decoder or {"name": "bernoulli", "body": "mlp", "hidden": [16]}}}
    if latents:
        tree["model"]["encoder"] = encoder or {"name": "mlp", "hidden": [16]}
        tree["model"]["latents"] = latents
    recipe = recipe_from_dict(tree, plugins=plugins)
    data = build_data(recipe.data, plugins, seed=0)
    torch.manual_seed(0)
    return build_model(recipe, data.image_shape, plugins).eval(), data


def call(plugins, name, model, data, split="test", **options):
    from gentk.evaluate import build_metric

    with torch.no_grad():
        return build_metric(plugins, name, options)(
            model=model, data=data, device=torch.device("cpu"), split=split, batch_size=25, max_examples=None, seed=0, run_dir=None, step=0
        )


GAUSSIAN = {"z": {"size": 2, "head": "gaussian", "prior": {"name": "standard_normal"}, "regularizer": {"name": "kl"}}}


def test_a_uniform_binary_model_scores_one_bit_per_dim(plugins):
    model, data = tiny(plugins, {})
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every logit 0: p(pixel) = 1/2
    for name, key in (("nll", "nll"), ("elbo", "elbo_nll"), ("recon_nll", "recon_nll"), ("iwae", "iwae_nll")):
        values = call(plugins, name, model, data, **({"k": 3} if name == "iwae" else {}))
        assert values[f"{key}_bpd"] == pytest.approx(1.0, abs=1e-6), name
        assert values[key] == pytest.approx(64 * math.log(2), rel=1e-6)


def trained_vae(plugins, steps=60):
    """A tiny VAE (8-D z) trained briefly: its decoder uses z, so q(z|x) differs from p(z|x) and k matters."""
    model, data = tiny(plugins, {"z": dict(GAUSSIAN["z"], size=8)})
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = data.train_batches(50, seed=0)
    for _ in range(steps):
        optimizer.zero_grad()
        model.reconstruction_loss(next(batches))[0].backward()
        optimizer.step()
    return model.eval(), data


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared machine
    yield
    torch.set_num_threads(threads)


def test_iwae_bound_is_above_the_elbo_and_grows_with_k(plugins, one_thread):
    model, data = trained_vae(plugins)
    x = next(data.eval_batches("test", 60)).x
    with torch.no_grad():
        log_w = model.log_importance_weights(x, 1000, generator=torch.Generator().manual_seed(2))
        assert log_w.shape == (1000, 60)
        # E[bound_k] estimated from 1000 / k disjoint groups of k samples each
        bounds = {k: torch.stack([M.iwae_bound(group) for group in log_w.split(k)]).mean().item() for k in (1, 10, 100, 1000)}
        torch.manual_seed(1)
        elbo = torch.stack([model.elbo(x) for _ in range(50)]).mean().item()  # analytic KL, 50 draws
    assert bounds[1] == pytest.approx(elbo, abs=0.2)  # k = 1 is a one-sample ELBO
    assert elbo < bounds[10] < bounds[100] < bounds[1000]
    # the registered metric, several chunks per image: the same bound, as an NLL
    values = call(plugins, "iwae", model, data, k=100, chunk=700)
    assert values["iwae_nll"] < call(plugins, "elbo", model, data)["elbo_nll"]
    assert values["iwae_nll_bpd"] == pytest.approx(values["iwae_nll"] / (64 * math.log(2)))


def test_importance_weights_need_a_gaussian_head(plugins):
    adversarial = {
        "z": {"size": 2, "head": "deterministic", "prior": {"name": "standard_normal"}, "regularizer": {"name": "adversarial", "discriminator": [8]}}
    }
    model, data = tiny(plugins, adversarial)
    with pytest.raises(GentkError, match="gaussian head"):
        call(plugins, "iwae", model, data, k=2)
    with pytest.raises(GentkError, match="KL"):
        call(plugins, "elbo", model, data)
    assert call(plugins, "recon_nll", model, data)["recon_nll"] > 0


class Oracle(torch.nn.Module):
    """A categorical 'encoder' that reads the label off the synthetic image's class template.

    Its cluster for an image is `assign[label]`: a permutation gives a perfect clustering, a
    merge of two classes the known error of that merge.
    """

    def __init__(self, data, assign, clusters):
        super().__init__()
        batch = next(data.eval_batches("train", 200))
        flat = batch.x.flatten(1)
        self.templates = torch.stack([flat[batch.y == c].mean(0) for c in range(4)])
        self.assign, self.clusters = torch.tensor(assign), clusters

    def forward(self, x):
        label = torch.cdist(x.flatten(1), self.templates).argmin(1)
        logits = 10.0 * torch.nn.functional.one_hot(self.assign[label], self.clusters).float()
        return {"y": {"logits": logits, "code": logits.softmax(-1)}}


def oracle(data, assign, clusters=6, supervised=False):
    import types

    spec = types.SimpleNamespace(size=clusters, head="categorical", supervised=supervised)  # the LatentSpec fields metrics read
    return types.SimpleNamespace(encoder=Oracle(data, assign, clusters), latents={"y": spec})


def test_cluster_error_metric_known_answers(plugins):
    _, data = tiny(plugins, {})
    test_labels = np.concatenate([b.y.numpy() for b in data.eval_batches("test", 100)])
    perfect = call(plugins, "cluster_error", oracle(data, [3, 0, 5, 1]), data)
    used = perfect.pop("clusters_used")
    assert perfect == {"cluster_error_aae": 0.0, "cluster_error_majority": 0.0, "cluster_error_hungarian": 0.0}
    frequencies = np.bincount(test_labels) / len(test_labels)
    assert used == pytest.approx(math.exp(-(frequencies * np.log(frequencies)).sum()))  # four classes, four clusters
    # classes 1 and 2 merged into cluster 4: one of them is wrong under every protocol
    merged = call(plugins, "cluster_error", oracle(data, [0, 4, 4, 1]), data)
    lost = 100 * min((test_labels == 1).mean(), (test_labels == 2).mean()), 100 * max((test_labels == 1).mean(), (test_labels == 2).mean())
    for protocol in ("aae", "majority", "hungarian"):
        assert merged[f"cluster_error_{protocol}"] in (pytest.approx(lost[0]), pytest.approx(lost[1])), protocol
    # during training the split is validation; clusters are then labelled on training examples
    assert call(plugins, "cluster_error", oracle(data, [3, 0, 5, 1]), data, split="validation")["cluster_error_aae"] == 0.0


def test_semisup_error_metric_known_answers(plugins):
    _, data = tiny(plugins, {})
    test_labels = np.concatenate([b.y.numpy() for b in data.eval_batches("test", 100)])
    assert call(plugins, "semisup_error", oracle(data, [0, 1, 2, 3], 4, supervised=True), data) == {"semisup_error": 0.0}
    wrong = call(plugins, "semisup_error", oracle(data, [0, 1, 1, 3], 4, supervised=True), data)["semisup_error"]
    assert wrong == pytest.approx(100 * (test_labels == 2).mean())
    with pytest.raises(GentkError, match="supervised"):
        call(plugins, "semisup_error", oracle(data, [0, 1, 2, 3], 4), data)


def test_code_space_metric_and_scatter(plugins, tmp_path):
    model, data = tiny(plugins, GAUSSIAN)
    from gentk.evaluate import build_metric

    with torch.no_grad():
        values = build_metric(plugins, "code_space", {"examples": 50})(
            model=model, data=data, device=torch.device("cpu"), split="test", batch_size=25, max_examples=None, seed=0, run_dir=tmp_path, step=7
        )
    assert set(values) == {"code_z_mmd", "code_z_mean_norm", "code_z_cov_dist", "code_z_gaussian_kl"}
    assert all(math.isfinite(v) for v in values.values())
    pytest.importorskip("matplotlib")
    assert (tmp_path / "code_space" / "z-step-00000007.png").stat().st_size > 1000


def test_metric_options_are_validated(plugins):
    from gentk.evaluate import build_metric, parse_options

    assert parse_options(["iwae.k=50", "code_space.plot=false", "cluster_error.latent=y"]) == {
        "iwae": {"k": 50},
        "code_space": {"plot": False},
        "cluster_error": {"latent": "y"},
    }
    with pytest.raises(GentkError, match="METRIC.KEY=VALUE"):
        parse_options(["k=50"])
    with pytest.raises(GentkError, match="--option iwae.k=\\[1,: cannot parse"):  # the rules of --set
        parse_options(["iwae.k=[1,"])
    with pytest.raises(GentkError, match="Did you mean 'k'"):
        build_metric(plugins, "iwae", {"kk": 3})
    with pytest.raises(GentkError, match="iwae"):
        build_metric(plugins, "iwae", {"k": 0})
