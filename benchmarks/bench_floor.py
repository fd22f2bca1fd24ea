"""The floor: the model's own speed, a bare ``session.run`` on an already letterboxed tensor."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from agent.postprocess import letterbox
from agent.preprocess import letterbox_uint8
from agent.runtime import INT8_CPU_DISABLED_OPTIMIZERS
from benchmarks.bench_base import ModelInfo, cpu_s, median, percentile

SPIN_MODES = ("off", "on", "on+stop")  # spinning: never / ONNX Runtime's default / during runs only (the agent's)
_SETTLE_S = 0.12  # pause before each floor run: a spinning pool of another session goes on ~60 ms after its run


def _session(path: Path, threads: int, spin: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if spin == "off" else "1")
    if spin == "on+stop":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if "quantization" in session.get_modelmeta().custom_metadata_map:  # as the agent opens it (agent.runtime)
        disabled = list(INT8_CPU_DISABLED_OPTIMIZERS)
        session = ort.InferenceSession(str(path), options, ["CPUExecutionProvider"], disabled_optimizers=disabled)
    return session


class Floor:
    """The model's own speed: a bare ``session.run`` on an already letterboxed tensor.

    ``choose()`` runs a grid of thread counts (1 .. cores and ONNX Runtime's default) and spinning modes
    (off; on, ONNX Runtime's default, which goes on spinning after each run; on during runs only, as the agent
    runs), interleaved, each run after a short pause so that no other session's threads are still spinning,
    and keeps the fastest. ``sample()`` then adds runs of that configuration and of the agent's (the same
    thread count, spinning during runs only) between the other measurements, so that the floor is the median
    over the whole run, exposed to the same background load as everything compared with it. CPU per run is
    measured over the run and the pause after it (what a spinning pool burns after the run counts).
    """

    def __init__(self, model: ModelInfo, frame: np.ndarray) -> None:
        self.model = model
        probe = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
        uint8 = probe.get_inputs()[0].type == "tensor(uint8)"  # an int8 file with the pixels' bytes as input
        self.tensor, _ = (letterbox_uint8 if uint8 else letterbox)(frame, model.input_hw)
        self.best: tuple[int, str] = (0, "on+stop")
        self.sessions: dict[tuple[int, str], ort.InferenceSession] = {}
        self.walls: dict[tuple[int, str], list[float]] = {}
        self.cpus: dict[tuple[int, str], list[float]] = {}
        self.hot: list[float] = []  # back-to-back runs of the best configuration (see burst)
        self.grid: dict[str, float] = {}

    def _run(self, config: tuple[int, str]) -> None:
        session = self.sessions[config]
        feed = {session.get_inputs()[0].name: self.tensor}
        time.sleep(_SETTLE_S)
        c0, t0 = cpu_s(), time.perf_counter()
        session.run(None, feed)
        wall = (time.perf_counter() - t0) * 1000
        time.sleep(_SETTLE_S)
        self.walls.setdefault(config, []).append(wall)
        self.cpus.setdefault(config, []).append((cpu_s() - c0) * 1000)

    def choose(self, runs: int) -> None:
        cores = os.cpu_count() or 1
        configs = [(t, spin) for t in sorted({*range(1, cores + 1), 0}) for spin in SPIN_MODES]
        self.sessions = {c: _session(self.model.path, *c) for c in configs}
        for c in configs:
            self.sessions[c].run(None, {self.sessions[c].get_inputs()[0].name: self.tensor})
        for rep in range(runs):
            for c in configs if rep % 2 == 0 else configs[::-1]:
                self._run(c)
        self.grid = {f"{t or 'default'} threads, spinning {sp}": median(self.walls[(t, sp)]) for t, sp in configs}
        self.best = min(configs, key=lambda c: median(self.walls[c]))
        keep = {self.best, self.agent_config}
        self.sessions = {c: sess for c, sess in self.sessions.items() if c in keep}
        self.walls = {c: v for c, v in self.walls.items() if c in keep}
        self.cpus = {c: v for c, v in self.cpus.items() if c in keep}
        self.publish()

    @property
    def agent_config(self) -> tuple[int, str]:
        return (self.best[0], "on+stop")  # as agent/model.py configures its session

    def sample(self, runs: int) -> None:
        for _ in range(runs):
            for c in sorted({self.best, self.agent_config}):
                self._run(c)
        self.burst(runs)
        self.publish()

    def burst(self, runs: int) -> None:
        """Back-to-back runs of the best configuration, no pause: the model's own rate when frames queue up,
        what the throughput runs are compared with. (After a pause a run is slower, caches and the pool's
        threads cold: that is the paced runs' situation, compared with the paused samples.)"""
        session = self.sessions[self.best]
        feed = {session.get_inputs()[0].name: self.tensor}
        time.sleep(_SETTLE_S)
        session.run(None, feed)  # wakes the pool: not counted
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(None, feed)
            self.hot.append((time.perf_counter() - t0) * 1000)

    def mark(self) -> tuple[int, int]:
        return len(self.walls[self.best]), len(self.hot)

    def local(self, since: tuple[int, int]) -> dict[str, float]:
        """The floor over the samples taken since ``mark()``: next to a measurement, in time."""
        best = self.walls[self.best][since[0] :]
        agent = self.walls[self.agent_config][since[0] :]
        return {
            "best_ms": median(best),
            "hot_ms": median(self.hot[since[1] :]),
            "agent_ms": median(agent),
            "agent_cpu_ms": median(self.cpus[self.agent_config][since[0] :]),
            "runs": len(best),
        }

    def publish(self) -> None:
        best, agent = self.walls[self.best], self.walls[self.agent_config]
        self.model.floor = {
            "best_ms": median(best),
            "best_p90_ms": percentile(best, 90),
            "best_threads": self.best[0],
            "best_spin": self.best[1],
            "grid_ms": self.grid,
            "agent_ms": median(agent),
            "agent_cpu_ms": median(self.cpus[self.agent_config]),
            "runs": len(best),
        }
        if self.hot:
            self.model.floor["hot_ms"] = median(self.hot)
