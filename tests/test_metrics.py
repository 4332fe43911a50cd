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
