"""ONNX Runtime for the local model: sessions, execution providers, and the helper threads beside them.

:func:`open_session` opens a model's session on the requested providers that this ONNX Runtime has (else
on CPU) and logs what was requested, available and used; :func:`session_options` sets the threads and the
spinning; :func:`limit_helper_threads` caps OpenCV's and OpenBLAS's pools, whose cores are ONNX Runtime's.
Its lines are logged as ``agent.model``'s (the daemon quiets that logger for the sessions after the first).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import onnxruntime as ort

__all__ = [
    "DEFAULT_PROVIDERS",
    "INT8_CPU_DISABLED_OPTIMIZERS",
    "PROVIDER_NAMES",
    "ModelError",
    "first_line",
    "limit_helper_threads",
    "onnx_providers",
    "open_session",
    "session_options",
    "spins",
]

log = logging.getLogger("agent.model")


class ModelError(Exception):
    """The model file can't be used: missing, not ONNX, or a layout this agent doesn't decode."""


_BLAS_THREAD_SETTERS = (
    "openblas_set_num_threads",  # OpenBLAS (OpenCV's wheels bundle one)
    "scipy_openblas_set_num_threads64_",  # NumPy's wheels: OpenBLAS with prefixed 64-bit-int symbols
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
)


def limit_helper_threads() -> list[str]:
    """One thread for OpenCV's pool and for every OpenBLAS loaded in this process; returns the libraries capped.

    The cores are ONNX Runtime's. OpenCV's pool made mask decoding slower, not faster, beside it (benchmarks:
    23.6 -> 17.6 ms at 640x480 with 150 instances on one thread). OpenBLAS (NumPy's and OpenCV's own copy) runs
    a matmul of a few hundred thousand multiply-adds on every core and its workers then busy-wait for the next
    call: a mask resampled by matmuls every frame kept a second core spinning (process CPU 1.27 s per second of
    a loop of 1080p demo decodes, 0.28 with one thread). Linux: the libraries are found in /proc/self/maps;
    elsewhere only OpenCV's pool is set.
    """
    cv2.setNumThreads(1)
    capped: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = sorted({line.split(None, 5)[-1].strip() for line in maps if "openblas" in line.lower()})
    except OSError:
        return capped
    for path in paths:
        if not path.startswith("/") or "openblas" not in os.path.basename(path).lower():
            continue
        try:
            library = ctypes.CDLL(path)  # already loaded: dlopen hands back the same library
        except OSError:
            continue
        for name in _BLAS_THREAD_SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(ctypes.c_int(1))
                capped.append(os.path.basename(path))
                break
    return capped


def spins(spin: str, *, sessions: int, frames_in_flight: int) -> bool:
    """Whether ONNX Runtime's pool threads spin, for ``inference.local.spin`` (``on``, ``off`` or ``auto``).

    ``auto``: on for one session with one frame at a time (a spinning pool picks up each kernel sooner, and
    nothing of the agent's runs beside it), off when the agent's own work runs beside a session's run: more
    frames in flight than sessions (a frame's decode, masks and JSON during the next one's run), or several
    sessions (each other's runs); README "Speed: thread spinning".
    """
    if spin == "on":
        return True
    if spin == "off":
        return False
    if spin != "auto":
        raise ValueError(f"spin must be auto, on or off, got {spin!r}")
    return sessions <= 1 and frames_in_flight <= max(1, sessions)


def session_options(threads: int, *, spin: bool = True, spin_us: int = 0) -> ort.SessionOptions:
    """Options for one session: ``threads`` intra-op threads (0 = ONNX Runtime's choice, one per physical core)
    and whether that pool's threads spin (``inference.local.spin``, resolved by :func:`spins`); ``spin_us``
    (``inference.local.spin_us``, spinning only): how long a waiting thread spins before it sleeps, 0 = ONNX
    Runtime's default."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = let ONNX Runtime choose), got {threads}")
    if spin_us < 0:
        raise ValueError(f"spin_us must be >= 0 (0 = ONNX Runtime's default), got {spin_us}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if spin:
        # The pool threads spin while a run is in progress (spinning off made YOLOv8n-seg with 2 threads 15-20 %
        # slower on an idle machine) but stop as soon as it returns: by default they go on spinning ~60 ms after
        # every run, a core's worth of CPU that at a few frames per second rivals the model (benchmarks/NOTES.md).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if spin_us > 0:  # a short spin: kernels within a run still find the threads awake, the agent's work less so
            options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    else:
        # Waiting threads sleep instead: when other work shares the cores (the agent's own decode, masks and
        # JSON beside a run, other sessions, other processes) a spinning thread takes the core that work needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


_CPU = "CPUExecutionProvider"
INT8_CPU_DISABLED_OPTIMIZERS = ("NchwcTransformer",)
"""Graph transformers left out for a model ``seg-agent quantize`` wrote (its ``quantization`` metadata) on the
CPU provider alone: the NCHWc layout pass gains fp32 convolutions ~2x, but in an int8 graph it finds only the
few float layers left, each wrapped in ReorderInput/ReorderOutput; without it the int8 demo model's run took
3-5 % less CPU (benchmarks/NOTES.md). Where MLAS has no NCHWc kernels (ARM) the pass does nothing anyway."""
_CUDA = "CUDAExecutionProvider"
_TENSORRT = "TensorrtExecutionProvider"

PROVIDER_NAMES = {
    "cpu": _CPU,
    "cuda": _CUDA,
    "tensorrt": _TENSORRT,
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
}
"""Configuration names (``inference.local.providers``) -> ONNX Runtime execution providers."""

DEFAULT_PROVIDERS = (_CPU,)
"""CPU only: what a model is opened on unless told otherwise."""


def onnx_providers(names: Sequence[str] | str) -> list[str]:
    """Provider names as ONNX Runtime's, in order, without repeats: config names (``cpu``, ``cuda``,
    ``tensorrt``, ...) are mapped, ONNX Runtime's own names pass through. TensorRT brings CUDA right after
    it unless CUDA is listed (for the nodes TensorRT can't run, as ONNX Runtime advises); CPU is always
    last, the fallback."""
    if isinstance(names, str):
        names = [names]
    providers: list[str] = []
    for name in names:
        provider = PROVIDER_NAMES.get(name.lower(), name)
        if provider not in providers:
            providers.append(provider)
    if _TENSORRT in providers and _CUDA not in providers:
        providers.insert(providers.index(_TENSORRT) + 1, _CUDA)
    return [p for p in providers if p != _CPU] + [_CPU]


def _with_options(providers: Sequence[str], trt_cache_dir: Path | None) -> list[str | tuple[str, dict[str, str]]]:
    """TensorRT keeps its built engines in ``trt_cache_dir`` (minutes saved at every start on a Jetson)."""
    out: list[str | tuple[str, dict[str, str]]] = []
    for provider in providers:
        if provider == _TENSORRT and trt_cache_dir is not None:
            try:
                trt_cache_dir.mkdir(parents=True, exist_ok=True)
                options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(trt_cache_dir)}
                out.append((provider, options))
                continue
            except OSError as exc:
                log.warning(
                    "TensorRT engine cache %s unusable (%s): engines are rebuilt at every start", trt_cache_dir, exc
                )
        out.append(provider)
    return out


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_session(
    weights: Path, options: ort.SessionOptions, requested: Sequence[str] | str, trt_cache_dir: Path | None
) -> ort.InferenceSession:
    """A session on the requested providers that this ONNX Runtime has, else on CPU; one log line says
    what was requested, what is available and what is used. ``ModelError`` when the file can't be loaded."""
    wanted = onnx_providers(requested)
    available = list(ort.get_available_providers())
    usable = [p for p in wanted if p in available] or [_CPU]
    note = ""
    try:
        session = ort.InferenceSession(
            str(weights), sess_options=options, providers=_with_options(usable, trt_cache_dir)
        )
        if session.get_providers() == [_CPU] and "quantization" in session.get_modelmeta().custom_metadata_map:
            session = ort.InferenceSession(
                str(weights), options, [_CPU], disabled_optimizers=list(INT8_CPU_DISABLED_OPTIMIZERS)
            )
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        if usable == [_CPU]:
            raise ModelError(f"{weights}: not a loadable ONNX model: {first_line(exc)}") from exc
        note = f"; {', '.join(usable[:-1])} failed: {first_line(exc)}"
        try:
            session = ort.InferenceSession(str(weights), sess_options=options, providers=[_CPU])
        except Exception as exc2:
            raise ModelError(f"{weights}: not a loadable ONNX model: {first_line(exc2)}") from exc2
    used = list(session.get_providers())
    missing = [p for p in wanted if p not in used]
    log.log(
        logging.WARNING if missing else logging.INFO,
        "%s: ONNX Runtime providers requested %s; available here %s; using %s%s",
        weights.name,
        ", ".join(wanted),
        ", ".join(available),
        ", ".join(used),
        note or (f" ({', '.join(missing)} not in this onnxruntime build)" if missing else ""),
    )
    return session
