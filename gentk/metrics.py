"""Evaluation metrics of the PixelGAN autoencoder paper and its baselines.

Pure functions first (known-answer tested in tests/test_metrics.py), then the registered
metrics that apply them to a model and a dataset.

Clustering error of a categorical latent with K clusters (Makhzani & Frey 2017, Table 1;
protocol of Makhzani et al. 2016, "Adversarial Autoencoders", §6), three variants:

- ``aae``: each cluster takes the label of the held-out (validation) example with the
  highest probability for that cluster; test examples are labelled by their most likely
  cluster. This is the paper's number.
- ``majority``: each cluster takes the most frequent label among the validation examples
  assigned to it (a cluster nobody is assigned to labels nothing and counts as an error
  for any test example that lands in it).
- ``hungarian``: a one-to-one matching of clusters to classes that maximises agreement
  (Kuhn 1955, via scipy); with K > number of classes the unmatched clusters count as
  errors, so it is a strict lower bound on accuracy, meaningful mainly for K = classes.

Likelihoods are reported in nats per image and in bits per dimension:
bits/dim = nll_nats / (dims * ln 2). The importance-weighted bound (Burda et al. 2016,
"Importance Weighted Autoencoders", Eq. 8) is log (1/k) sum_i p(x, z_i) / q(z_i | x) with
z_i ~ q(z | x); it is >= the ELBO, grows with k and tends to log p(x). The paper protocol
estimates test NLLs with k = 5000. A PixelGAN autoencoder has no such bound: its encoder
is regularized adversarially on the aggregated posterior q(z), and with input noise it
has no density q(z | x) at all, so only the reconstruction NLL -log p(x | z) is reported
(docs/compare.md).

Registered metrics (``eval.metrics`` in a recipe; ``gentk eval --metrics``) follow the
call convention of docs/architecture.md: ``metric(model=, data=, device=, split=,
batch_size=, max_examples=, seed=, run_dir=, step=) -> {key: float}``. Building them with
options and running them on a model or a run directory is `gentk.evaluate`'s work; this
module imports neither it nor the engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from gentk import distributions
from gentk.contracts import DiagonalNormal, support
from gentk.distributions import bits_per_dim
from gentk.errors import GentkError
from gentk.options import configured, option
from gentk.plugins import hookimpl

CLUSTER_PROTOCOLS = ("aae", "majority", "hungarian")


def cluster_labels_aae(val_probs: np.ndarray, val_labels: np.ndarray) -> np.ndarray:
    """Label of each cluster k: the label of the validation example with the highest q(y=k|x).

    val_probs: (N, K) cluster probabilities; val_labels: (N,). Returns (K,) labels.
    """
    val_probs = np.asarray(val_probs)
    return np.asarray(val_labels)[val_probs.argmax(axis=0)]


def cluster_labels_majority(val_clusters: np.ndarray, val_labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """Label of each cluster: the most frequent label among validation examples assigned to it.

    Returns (K,) labels, -1 for a cluster no validation example was assigned to.
    """
    val_clusters, val_labels = np.asarray(val_clusters), np.asarray(val_labels)
    num_classes = int(val_labels.max()) + 1 if val_labels.size else 0
    counts = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(counts, (val_clusters, val_labels), 1)
    labels = counts.argmax(axis=1)
    labels[counts.sum(axis=1) == 0] = -1
    return labels


def cluster_labels_hungarian(val_clusters: np.ndarray, val_labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """One-to-one matching of clusters to classes maximising agreement; -1 for unmatched clusters."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:  # scipy is the 'metrics' extra
        raise GentkError('the hungarian clustering protocol needs scipy: pip install "gentk[metrics]"') from exc
    val_clusters, val_labels = np.asarray(val_clusters), np.asarray(val_labels)
    num_classes = int(val_labels.max()) + 1 if val_labels.size else 0
    counts = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(counts, (val_clusters, val_labels), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    labels = np.full(num_clusters, -1, dtype=np.int64)
    labels[rows] = cols
    return labels


def error_rate(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose predicted label differs from the true one (in [0, 1])."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if labels.size == 0:
        raise ValueError("error_rate of an empty set")
    return float((predicted != labels).mean())


def clustering_errors(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray, test_labels: np.ndarray) -> dict[str, float]:
    """Test error (in [0, 1]) of each clustering protocol, given cluster probabilities.

    val_probs, test_probs: (N, K) probabilities q(y|x) of the categorical latent;
    labels: (N,) true classes. Returns {"aae": .., "majority": .., "hungarian": ..}.
    """
    num_clusters = np.asarray(val_probs).shape[1]
    val_clusters = np.asarray(val_probs).argmax(axis=1)
    test_clusters = np.asarray(test_probs).argmax(axis=1)
    out = {}
    for protocol in CLUSTER_PROTOCOLS:
        if protocol == "aae":
            labels = cluster_labels_aae(val_probs, val_labels)
        elif protocol == "majority":
            labels = cluster_labels_majority(val_clusters, val_labels, num_clusters)
        else:
            labels = cluster_labels_hungarian(val_clusters, val_labels, num_clusters)
        out[protocol] = error_rate(labels[test_clusters], test_labels)
    return out


def effective_clusters(probs: np.ndarray) -> float:
    """How many clusters the data really uses: exp of the entropy of the hard assignments.

    probs: (N, K) q(y|x). K equally used clusters give K; one cluster gives 1; a collapse onto
    a handful of K = 30 shows as a number near that handful whatever the error is.
    """
    counts = np.bincount(np.asarray(probs).argmax(axis=1), minlength=np.asarray(probs).shape[1])
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def gaussian_moment_distance(codes: Tensor) -> dict[str, float]:
    """How far codes (N, D) are from N(0, I) in their first two moments.

    Returns the norm of the mean, the Frobenius norm of (covariance - I) divided by sqrt(D),
    and the closed-form KL(N(mean, cov) || N(0, I)) of the Gaussian fitted to the codes.
    """
    codes = codes.double()
    n, d = codes.shape
    mean = codes.mean(0)
    centered = codes - mean
    cov = centered.T @ centered / max(1, n - 1)
    eye = torch.eye(d, dtype=codes.dtype)
    sign, logdet = torch.linalg.slogdet(cov)
    kl = 0.5 * (torch.trace(cov) + mean @ mean - d - logdet) if sign > 0 else torch.tensor(math.inf)
    return {
        "mean_norm": float(mean.norm()),
        "cov_dist": float((cov - eye).norm() / math.sqrt(d)),
        "gaussian_kl": float(kl),
    }


def iwae_bound(log_weights: Tensor) -> Tensor:
    """The importance-weighted bound log (1/k) sum_i w_i from log weights (k, B); returns (B,).

    With k = 1 it is a one-sample ELBO estimate; its expectation grows with k (Burda et al.
    2016, Theorem 1). Computed with logsumexp, so weights of any magnitude are safe.
    """
    k = log_weights.shape[0]
    return torch.logsumexp(log_weights.double(), dim=0) - math.log(k)


def mmd_rbf(x: Tensor, y: Tensor, scales: Sequence[float] = (0.2, 0.5, 1.0, 2.0, 5.0)) -> float:
    """`gentk.distributions.mmd_rbf` of samples x (N, D) and y (M, D) in float64, as a float (the code_space metric's value)."""
    return float(distributions.mmd_rbf(x.double(), y.double(), scales))


def project_2d(codes: Tensor) -> Tensor:
    """Codes (N, D) as (N, 2) for a scatter plot: themselves for D <= 2, else the top-2 PCA axes."""
    codes = codes.double()
    if codes.shape[1] == 1:
        return torch.cat([codes, torch.zeros_like(codes)], 1)
    if codes.shape[1] == 2:
        return codes
    centered = codes - codes.mean(0)
    _, _, v = torch.linalg.svd(centered, full_matrices=False)
    return centered @ v[:2].T


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of run results."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


# --------------------------------------------------------------------------- registered metrics
#
# Each metric is a class with an attrs Config of its options, built with an instance of it:
# the defaults for the engine, others from `gentk eval --option NAME.KEY=VALUE`. Calling it evaluates the model
# (already in eval mode, on `device`) and returns {key: float}.


def _batches(data, split: str, batch_size: int, max_examples: int | None, device) -> Iterator[Any]:
    for batch in data.eval_batches(split, batch_size, max_examples=max_examples):
        yield batch.to(device)


def _dims(data) -> int:
    return int(np.prod(data.image_shape))


def _latent(model, wanted: str | None, *, head: str | None = None, supervised: bool = False, what: str) -> str:
    """The latent a metric applies to: `wanted`, or the only one of the right kind."""
    latents = getattr(model, "latents", {})
    fits = [n for n, s in latents.items() if (head is None or s.head == head) and (not supervised or s.supervised)]
    if wanted is not None:
        if wanted not in fits:
            raise GentkError(
                f"the {what} metric needs latent '{wanted}' to be {'a supervised ' if supervised else 'a '}{head or ''} latent; suitable "
                f"latents: {', '.join(fits) or 'none'}."
            )
        return wanted
    if len(fits) != 1:
        kind = ("supervised " if supervised else "") + (f"{head} " if head else "")
        raise GentkError(
            f"the {what} metric needs exactly one {kind}latent, this model has {len(fits)} ({', '.join(fits) or 'none'}); pass its name with "
            f"--option {what}.latent=NAME, or drop the metric from eval.metrics."
        )
    return fits[0]


def _mean_nll(values: Iterator[Tensor], dims: int, key: str) -> dict[str, float]:
    total, count = 0.0, 0
    for nll in values:
        total += float(nll.double().sum())
        count += nll.numel()
    if count == 0:
        raise GentkError(f"the {key} metric saw no examples: the evaluation split is empty.")
    mean = total / count
    return {key: mean, f"{key}_bpd": bits_per_dim(mean, dims)}


class NLL:
    """Exact test NLL of a model without latents (a PixelCNN), in nats and bits/dim."""

    @attrs.frozen
    class Config:
        pass

    def __call__(self, *, model, data, device, split, batch_size, max_examples, **_) -> dict[str, float]:
        return _mean_nll((-model.log_prob(b.x) for b in _batches(data, split, batch_size, max_examples, device)), _dims(data), "nll")


class ELBO:
    """Negative ELBO (an upper bound on the NLL) of a model whose latents are all KL-regularized."""

    @attrs.frozen
    class Config:
        pass

    def __call__(self, *, model, data, device, split, batch_size, max_examples, **_) -> dict[str, float]:
        return _mean_nll((-model.elbo(b.x) for b in _batches(data, split, batch_size, max_examples, device)), _dims(data), "elbo_nll")


@attrs.frozen
class IWAEConfig:
    k: int = option(5000, "importance samples per image (5000: the paper protocol; 50: IWAE training's k)", ge=1)
    chunk: int = option(5000, "images through the decoder at once (samples x images): memory vs speed", ge=1)


class IWAE:
    """Importance-weighted upper bound on the NLL (Burda et al. 2016) for Gaussian-latent models."""

    Config = IWAEConfig

    def __init__(self, config: IWAEConfig | None = None, **options) -> None:
        cfg = configured(IWAEConfig, config, options)
        self.k, self.chunk = cfg.k, cfg.chunk

    def nll(self, model, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """-log (1/k) sum_i p(x, z_i) / q(z_i | x) per image (B,), k samples drawn in chunks."""
        per_call = max(1, self.chunk // len(x))  # samples per decoder call
        parts, done = [], 0
        while done < self.k:
            n = min(per_call, self.k - done)
            parts.append(model.log_importance_weights(x, n, generator=generator).double())
            done += n
        return -iwae_bound(torch.cat(parts, 0))

    def __call__(self, *, model, data, device, split, batch_size, max_examples, seed=0, **_) -> dict[str, float]:
        generator = torch.Generator(device=device).manual_seed(seed)
        return _mean_nll((self.nll(model, b.x, generator) for b in _batches(data, split, batch_size, max_examples, device)), _dims(data), "iwae_nll")


class ReconNLL:
    """Reconstruction NLL -log p(x | z), z the encoder's code: a PixelGAN's or an AAE's only likelihood."""

    @attrs.frozen
    class Config:
        pass

    def __call__(self, *, model, data, device, split, batch_size, max_examples, **_) -> dict[str, float]:
        def values():
            for b in _batches(data, split, batch_size, max_examples, device):
                if model.encoder is None:
                    yield -model.log_prob(b.x)
                    continue
                heads = model.encoder(b.x)
                yield -model.decoder(b.x, torch.cat([heads[name]["code"] for name in model.latents], -1))

        return _mean_nll(values(), _dims(data), "recon_nll")


@attrs.frozen
class ClusterErrorConfig:
    latent: str | None = option(None, "the categorical latent (default: the model's only one)")


def class_probs(model, latent: str, data, split: str, batch_size: int, max_examples: int | None, device) -> tuple[np.ndarray, np.ndarray]:
    """q(y | x) of categorical `latent` (N, K) and the labels (N,) of `split`'s first `max_examples` images."""
    probs, labels = [], []
    for b in _batches(data, split, batch_size, max_examples, device):
        probs.append(torch.softmax(model.encoder(b.x)[latent]["logits"].double(), -1).cpu().numpy())
        labels.append(b.y.cpu().numpy())
    if not probs:
        raise GentkError(f"the '{split}' split is empty: nothing to cluster.")
    return np.concatenate(probs), np.concatenate(labels)


@torch.no_grad()
def majority_labels(model, latent: str, data, *, batch_size: int, max_examples: int | None, device) -> np.ndarray:
    """Each category of `latent`'s majority label, as the ``majority`` protocol of `ClusterError`
    labels clusters on the validation split (at most `max_examples` images): (K,), -1 for a
    category no validation image goes to."""
    probs, labels = class_probs(model, latent, data, "validation", batch_size, max_examples, device)
    return cluster_labels_majority(probs.argmax(axis=1), labels, model.latents[latent].size)


class ClusterError:
    """Clustering error (%) of a categorical latent under the aae, majority and hungarian protocols,
    and ``clusters_used``, the effective number of clusters of `split` (`effective_clusters`).

    Clusters are labelled on the validation split and the error is measured on `split`
    (the paper's protocol when `split` is test). When `split` is the validation split itself
    (evaluations during training) the clusters are labelled on as many training examples
    instead, whose labels an unsupervised model never saw.
    """

    Config = ClusterErrorConfig

    def __init__(self, config: ClusterErrorConfig | None = None, **options) -> None:
        self.latent = configured(ClusterErrorConfig, config, options).latent

    def __call__(self, *, model, data, device, split, batch_size, max_examples, **_) -> dict[str, float]:
        latent = _latent(model, self.latent, head="categorical", what="cluster_error")
        label_split = "validation" if split != "validation" and data.split_sizes.get("validation", 0) > 0 else "train"
        label_examples = max_examples or data.split_sizes[split]  # as many as are evaluated: the train split may be large
        val_probs, val_labels = class_probs(model, latent, data, label_split, batch_size, label_examples, device)
        test_probs, test_labels = class_probs(model, latent, data, split, batch_size, max_examples, device)
        errors = clustering_errors(val_probs, val_labels, test_probs, test_labels)
        out = {f"cluster_error_{protocol}": 100.0 * value for protocol, value in errors.items()}
        out["clusters_used"] = effective_clusters(test_probs)  # a collapse onto a few clusters shows here
        return out


class SemisupError:
    """Test error (%) of the supervised categorical head: argmax q(y | x) against the labels."""

    Config = ClusterErrorConfig

    def __init__(self, config: ClusterErrorConfig | None = None, **options) -> None:
        self.latent = configured(ClusterErrorConfig, config, options).latent

    def __call__(self, *, model, data, device, split, batch_size, max_examples, **_) -> dict[str, float]:
        latent = _latent(model, self.latent, head="categorical", supervised=True, what="semisup_error")
        probs, labels = class_probs(model, latent, data, split, batch_size, max_examples, device)
        return {"semisup_error": 100.0 * error_rate(probs.argmax(1), labels)}


@attrs.frozen
class CodeSpaceConfig:
    latent: str | None = option(None, "the real-valued latent (default: every one)")
    examples: int = option(2000, "codes (and as many prior samples) for the MMD and moments", ge=2)
    plot: bool = option(True, "write a 2-D scatter of the codes coloured by label to RUN_DIR/code_space/ (needs matplotlib)")


class CodeSpace:
    """How close the aggregated posterior q(z) is to the prior p(z), and the paper's code-space scatter.

    Per real-valued latent NAME: ``code_NAME_mmd`` (unbiased MMD^2 between codes z ~ q(z|x)
    and prior samples, `mmd_rbf`), and, for a diagonal Gaussian prior, the moment distances
    of `gaussian_moment_distance` after standardizing the codes by the prior's mean and
    scale (``code_NAME_mean_norm``, ``code_NAME_cov_dist``, ``code_NAME_gaussian_kl``).
    With ``plot``, the scatter is ``RUN_DIR/code_space/NAME-step-STEP.png``, handed to
    ``log_image("code_space/NAME", path)`` (the engine's ``gentk_log_image`` hook).
    """

    Config = CodeSpaceConfig

    def __init__(self, config: CodeSpaceConfig | None = None, **options) -> None:
        cfg = configured(CodeSpaceConfig, config, options)
        self.latent, self.examples, self.plot = cfg.latent, cfg.examples, cfg.plot

    def __call__(
        self, *, model, data, device, split, batch_size, max_examples, seed=0, run_dir=None, step=0, log_image=None, **_
    ) -> dict[str, float]:
        if self.latent is not None and self.latent not in model.priors:
            raise GentkError(f"code_space: this model has no latent '{self.latent}'; its latents: {', '.join(model.priors) or 'none'}.")
        names = [self.latent] if self.latent else [n for n, p in model.priors.items() if support(p) == "real"]
        if not names or self.latent and support(model.priors[self.latent]) != "real":
            raise GentkError("the code_space metric needs a real-valued latent (a Gaussian, mixture or other real prior); this model has none.")
        limit = self.examples if max_examples is None else min(self.examples, max_examples)
        codes: dict[str, list[Tensor]] = {n: [] for n in names}
        labels = []
        for b in _batches(data, split, batch_size, limit, device):
            encoded = model.encode(b.x, sample=True)  # samples of q(z|x): together, samples of q(z)
            for n in names:
                codes[n].append(encoded[n].double().cpu())
            labels.append(b.y.cpu())
        generator = torch.Generator(device=device).manual_seed(seed)
        out = {}
        for n in names:
            z = torch.cat(codes[n])
            prior = model.priors[n]
            p = prior.sample(len(z), generator).double().cpu()
            out[f"code_{n}_mmd"] = mmd_rbf(z, p)
            if isinstance(prior, DiagonalNormal):
                mean, logvar = (t.double().cpu() for t in prior.normal_params())
                for key, value in gaussian_moment_distance((z - mean) * torch.exp(-0.5 * logvar)).items():
                    out[f"code_{n}_{key}"] = value
            if self.plot and run_dir is not None:
                path = scatter_codes(z, torch.cat(labels), Path(run_dir) / "code_space" / f"{n}-step-{step:08d}.png", title=f"q({n}) at step {step}")
                if path is not None and log_image is not None:
                    log_image(f"code_space/{n}", path)
        return out


def scatter_codes(codes: Tensor, labels: Tensor, path: Path, *, title: str = "") -> Path | None:
    """A 2-D scatter of codes coloured by label (the paper's code-space figures); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xy = project_2d(codes).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=labels.numpy(), cmap="tab10", s=3, alpha=0.7)
    ax.legend(*points.legend_elements(), loc="upper right", fontsize=7, markerscale=0.8)
    ax.set_title(title + (" (top-2 PCA axes)" if codes.shape[1] > 2 else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@hookimpl
def gentk_register_metrics(register):
    register("nll", NLL, doc="exact NLL (nats, bits/dim) of a model without latents (PixelCNN)")
    register("elbo", ELBO, doc="negative ELBO (nats, bits/dim) of a model whose latents are KL-regularized")
    register("iwae", IWAE, doc="importance-weighted NLL bound, k samples (Burda et al. 2016; k = 5000 as in the paper)")
    register("recon_nll", ReconNLL, doc="reconstruction NLL -log p(x|z) (adversarial models have no likelihood bound)")
    register("cluster_error", ClusterError, doc="clustering error (%) of a categorical latent: aae, majority, hungarian protocols")
    register("semisup_error", SemisupError, doc="test error (%) of the supervised categorical head")
    register("code_space", CodeSpace, doc="distance of q(z) to p(z) (MMD, moments) and a 2-D code scatter coloured by label")
