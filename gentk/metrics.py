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
bits/dim = nll_nats / (dims * ln 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from gentk.errors import GentkError

CLUSTER_PROTOCOLS = ("aae", "majority", "hungarian")


def bits_per_dim(nll_nats: Tensor | float, dims: int) -> Tensor | float:
    """Negative log-likelihood in nats per image -> bits per dimension (sub-pixel)."""
    return nll_nats / (dims * math.log(2))


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
