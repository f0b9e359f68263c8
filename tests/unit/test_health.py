"""Embedding health figures on hand-built vectors."""

import numpy as np

from feast_autofeat.recommend.health import _histogram, neighbour_overlap


def test_neighbour_overlap_is_rotation_invariant_and_drops_for_unrelated_spaces():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))  # a retrained model may rotate the space: same structure
    assert neighbour_overlap(a, a @ q) == 1.0
    assert neighbour_overlap(a, rng.normal(size=(300, 16))) < 0.15  # chance level is 10/299
    noisy = neighbour_overlap(a, a + rng.normal(scale=0.3, size=a.shape))
    assert 0.3 < noisy < 1.0


def test_histogram_of_a_constant_column():
    counts, edges = _histogram(np.ones(50, np.float32))  # unit vectors: every norm is 1
    assert sum(counts) == 50 and edges[0] < 1.0 < edges[-1] and len(edges) == 31
