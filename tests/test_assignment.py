from __future__ import annotations

import numpy as np
import pytest

from agent.assignment import assign_greedy, greedy_pairs


def _greedy_reference(cost: np.ndarray, max_cost: float) -> list[tuple[int, int]]:
    """The plain greedy assignment: every pair in row-major order, stably sorted by cost, taken when both free."""
    n, m = cost.shape
    order = sorted(
        ((cost[r, c], r, c) for r in range(n) for c in range(m) if cost[r, c] <= max_cost), key=lambda p: p[0]
    )
    rows: set[int] = set()
    cols: set[int] = set()
    out = []
    for _, r, c in order:
        if r not in rows and c not in cols:
            rows.add(r)
            cols.add(c)
            out.append((r, c))
    return out


@pytest.mark.parametrize(
    ("cost", "pairs"),
    [
        (np.zeros((0, 0)), []),  # empty
        (np.zeros((0, 2)), []),
        (np.zeros((3, 0)), []),
        ([[0.2]], [(0, 0)]),  # one
        ([[0.2, 0.9], [0.9, 0.3]], [(0, 0), (1, 1)]),  # each alone: taken in cost order, no loop
        ([[0.2, 0.3], [0.9, 0.9]], [(0, 0)]),  # a shared row: the cheaper
        ([[0.3, 0.9, 0.9], [0.2, 0.9, 0.9], [0.9, 0.9, 0.1]], [(2, 2), (1, 0)]),  # a shared column beside one alone
        ([[0.4, 0.4], [0.4, 0.4]], [(0, 0), (1, 1)]),  # ties: row-major order
    ],
)
def test_greedy_pairs(cost: object, pairs: list[tuple[int, int]]) -> None:
    rows, cols = greedy_pairs(np.asarray(cost, float), 0.5)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == pairs
    assert rows.dtype == np.int64 and cols.dtype == np.int64


def test_greedy_pairs_is_the_plain_greedy_on_scenes_with_few_overlaps() -> None:
    """Mostly one candidate per row and column, a few objects overlapping (the tracker's usual frame): the
    pairs alone in their row and column are taken without the loop; the result is the plain greedy's, in order."""
    rng = np.random.default_rng(15)
    for _ in range(300):
        n, m = (int(v) for v in rng.integers(0, 30, size=2))
        cost = np.ones((n, m))
        k = min(n, m)
        cost[np.arange(k), rng.permutation(m)[:k]] = np.round(rng.random(k), 2)
        extra = rng.random((n, m)) < rng.choice([0.0, 0.02, 0.1])
        cost[extra] = np.round(rng.random(int(extra.sum())), 2)
        rows, cols = greedy_pairs(cost, 0.65)
        assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == _greedy_reference(cost, 0.65)
        pairs, _, _ = assign_greedy(cost, 0.65)
        assert [tuple(p) for p in pairs.tolist()] == _greedy_reference(cost, 0.65)
