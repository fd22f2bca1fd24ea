"""benchmarks/line_counts.py's truth rule (plain scalar, written apart from agent code) and agent.zones.Areas
follow the same documented crossing definition (README: Lines): on random walks that wobble round the lines,
go round their ends and sit inside their bands, both count the same crossings, with no band, the default
band and a given one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from agent.zones import Areas

REPO = Path(__file__).resolve().parents[1]


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_line_counts", REPO / "benchmarks" / "line_counts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("seed", "band"), [(s, b) for s in range(4) for b in (None, 0.0, 0.01)])
def test_the_benchmarks_truth_and_the_agent_count_alike(seed: int, band: float | None) -> None:
    bench = _benchmark()
    lines = bench.make_lines(1, band)
    rng = np.random.default_rng(seed)
    w, h = 640, 480
    # anchors near the lines (x 128 and 544, y 240) with a wobble of a few pixels, some beyond the frame
    # (round a line's end), steps of up to 25 px
    centres = np.array([[128.0, 100.0], [544.0, 300.0], [300.0, 240.0], [128.0, 240.0], [550.0, 500.0]])
    pos = centres + rng.normal(0, 3, size=centres.shape)
    frames, areas = [], Areas(lines=lines)
    got: dict[str, int] = {f"{ln.name}/{d}/all": 0 for ln in lines for d in ("in", "out")}
    for _ in range(400):
        drift = rng.normal(0, 1, size=pos.shape) * np.where(rng.random((len(pos), 1)) < 0.1, 25.0, 3.0)
        pos = np.clip(pos + drift, [-60, -60], [w + 60, h + 60])
        pos += (centres - pos) * 0.05  # back towards the lines
        objs = [
            {"id": i + 1, "box_xyxy": [x - 5, y - 20, x + 5, y], "visibility": 1.0}
            for i, (x, y) in enumerate(pos.tolist())
        ]
        frames.append(objs)
        for c in areas.update(np.arange(1, len(pos) + 1), pos, (w, h))[1]:
            got[f"{c.line}/{c.direction}/all"] += 1
    doc = {"width": w, "height": h, "min_visibility": 0.5, "frames": frames}
    truth = bench.truth_counts(doc, 10**6, lines)
    assert sum(truth.values()) > 20  # the walks do cross
    assert truth == got
