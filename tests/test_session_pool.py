"""agent.session_pool: runs on the sessions' own threads give what the session gives, in any interleaving."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from agent.model import OnnxModel
from agent.session_pool import SessionPool

DEMO_MODEL = Path(__file__).resolve().parent.parent / "models" / "demo-seg.onnx"


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    return OnnxModel(DEMO_MODEL, threads=1)


def _tensors(model: OnnxModel, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((1, 3, *model.input_hw), dtype=np.float32) for _ in range(n)]


@pytest.mark.parametrize("sessions", [1, 2])
def test_own_threads_answer_each_frame_with_its_own_outputs(model: OnnxModel, sessions: int) -> None:
    models = [model] + [OnnxModel(DEMO_MODEL, threads=1) for _ in range(sessions - 1)]
    pool = SessionPool(models, own_threads=True)
    tensors = _tensors(model, 6)
    want = [model.run(t) for t in tensors]
    got: dict[int, tuple[np.ndarray, ...]] = {}
    try:
        threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, pool.run(tensors[i]))) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        own = list(pool._threads)
        assert sorted(t.name for t in own) == [f"session-{i}" for i in range(sessions)]
    finally:
        pool.close()
    assert sorted(got) == list(range(6))
    for i in range(6):  # each frame got its own tensor's outputs, not a neighbour's
        for a, b in zip(got[i], want[i], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not any(t.is_alive() for t in own)


def test_own_threads_detect_matches_the_model(model: OnnxModel) -> None:
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[60:180, 80:240] = 200
    pool = SessionPool([model], own_threads=True)
    try:
        got = pool.detect(frame, confidence=0.3, overlap=0.45)
    finally:
        pool.close()
    want = model.detect(frame, confidence=0.3, overlap=0.45)
    np.testing.assert_array_equal(got.class_id, want.class_id)
    np.testing.assert_allclose(got.boxes_xyxy, want.boxes_xyxy, atol=1e-3)


def test_a_failed_run_is_raised_in_the_frame_thread_and_the_thread_goes_on(model: OnnxModel) -> None:
    pool = SessionPool([model], own_threads=True)
    try:
        with pytest.raises(Exception, match=r"(?i)invalid dimensions"):
            pool.run(np.zeros((1, 3, 8, 8), np.float32))  # the wrong input size: ONNX Runtime refuses it
        (tensor,) = _tensors(model, 1)
        assert len(pool.run(tensor)) == len(model.run(tensor))  # the session's thread survived
    finally:
        pool.close()


def test_closed_pool_refuses_runs_and_close_twice_is_harmless(model: OnnxModel) -> None:
    pool = SessionPool([model], own_threads=True)
    (tensor,) = _tensors(model, 1)
    pool.run(tensor)
    pool.close()
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.run(tensor)


def test_without_own_threads_close_changes_nothing(model: OnnxModel) -> None:
    pool = SessionPool([model])
    (tensor,) = _tensors(model, 1)
    pool.close()
    assert len(pool.run(tensor)) == 2  # runs on the caller's thread, as before session threads


def test_the_router_closes_the_pool_it_was_given(model: OnnxModel) -> None:
    from agent.config import InferenceSettings
    from agent.router import Router

    pool = SessionPool([model], own_threads=True)
    router = Router(InferenceSettings(mode="local"), local=pool, remote=None, local_slots=3)
    (tensor,) = _tensors(model, 1)
    pool.run(tensor)
    threads = list(pool._threads)
    assert [t.name for t in threads] == ["session-0"] and threads[0].is_alive()
    router.close()  # the agent's stop: its pipeline closes the router last
    assert not threads[0].is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        pool.run(tensor)
