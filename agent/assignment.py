"""Greedy assignment of rows (tracks) to columns (detections) by lowest cost, for :mod:`agent.tracking`.

Pure NumPy, no side effects. :func:`greedy_pairs` is the tracker's hot path (index arrays only);
:func:`assign_greedy` also says which rows and columns were left over; :func:`covered_m` says which columns some
of the rows could take.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["assign_greedy", "covered_m", "greedy_pairs"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def assign_greedy(cost_nm: F64, max_cost: float) -> tuple[I64, I64, I64]:
    """Rows to columns by lowest cost first, each at most once, only pairs with cost <= ``max_cost``.

    Returns ``(matches_k2, unmatched_rows, unmatched_cols)``: (k, 2) row/column pairs and the index arrays
    of the rows and columns left over."""
    cost = np.asarray(cost_nm, dtype=np.float64)
    n, m = cost.shape
    rows, cols = greedy_pairs(cost, max_cost)
    row_left = np.ones(n, dtype=bool)
    col_left = np.ones(m, dtype=bool)
    row_left[rows] = False
    col_left[cols] = False
    pairs = np.stack([rows, cols], axis=1)
    return pairs, np.nonzero(row_left)[0].astype(np.int64), np.nonzero(col_left)[0].astype(np.int64)


def greedy_pairs(cost: F64, max_cost: float) -> tuple[I64, I64]:
    """:func:`assign_greedy`'s matches as a row index array and a column index array (the tracker's hot
    path: nothing else is built). Candidates in row-major order, stably sorted by cost, taken greedily."""
    rows, cols = np.nonzero(cost <= max_cost)
    if len(rows) > 1:
        order = np.argsort(cost[rows, cols], kind="stable")
        rows, cols = rows[order], cols[order]
        # a candidate alone in its row and its column is a match whatever the order; only the others (few:
        # objects that overlap) are taken one by one
        per_row = np.bincount(rows)
        per_col = None if per_row.max() > 1 else np.bincount(cols)
        if per_col is None or per_col.max() > 1:  # the usual frame has none: every candidate is a match
            per_col = np.bincount(cols) if per_col is None else per_col
            shared = (per_row[rows] > 1) | (per_col[cols] > 1)
            keep = ~shared
            at = np.nonzero(shared)[0]
            keep[at[_greedy_loop(rows[at].tolist(), cols[at].tolist())]] = True
            rows, cols = rows[keep], cols[keep]
    return rows.astype(np.int64, copy=False), cols.astype(np.int64, copy=False)


def _greedy_loop(rows: list[int], cols: list[int]) -> list[int]:
    """The positions of the candidates taken, in order, each row and column at most once."""
    row_used: set[int] = set()
    col_used: set[int] = set()
    taken: list[int] = []
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        if r not in row_used and c not in col_used:
            row_used.add(r)
            col_used.add(c)
            taken.append(k)
    return taken


def covered_m(cost_nm: F64, rows_n: npt.NDArray[np.bool_], max_cost: float) -> npt.NDArray[np.bool_]:
    """(m,) columns that at least one of the rows ``rows_n`` could take (cost <= ``max_cost``; NaN never)."""
    cost = np.asarray(cost_nm, dtype=np.float64)
    chosen = cost[np.asarray(rows_n, dtype=bool)]
    out: npt.NDArray[np.bool_] = (chosen <= max_cost).any(axis=0) if len(chosen) else np.zeros(cost.shape[1], bool)
    return out
