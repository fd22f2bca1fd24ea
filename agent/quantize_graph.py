"""What :mod:`agent.quantize` keeps in float, and which integer types suit this CPU. Pure functions.

:func:`float_head_nodes` walks an ONNX graph backwards from its outputs; :func:`pick_activations` turns
the CPU's flags (``/proc/cpuinfo``, read by :func:`cpu_flags`) into ONNX Runtime's activation type.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["VNNI_FLAGS", "cpu_flags", "float_head_nodes", "is_arm", "is_x86", "pick_activations"]

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx10_vnni", "amx_int8"})
"""x86 flags of an int8 dot-product instruction (``VPDPBUSD``): U8S8 sums cannot saturate there."""

DFL_MARK = "/dfl/"
"""Ultralytics' distribution-focal-loss box decode (a Softmax and a fixed Conv): always float."""

_NO_DATA_INPUTS = frozenset({"Shape", "Size"})
"""Ops that read only their input's shape: the walk does not follow them into the network."""


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``), lower case; empty where unreadable."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.lower().split())
    return frozenset(flags)


def is_x86(machine: str) -> bool:
    return machine.lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def is_arm(machine: str) -> bool:
    m = machine.lower()
    return m in ("aarch64", "arm64") or m.startswith("arm")


def pick_activations(choice: str, flags: Iterable[str], machine: str | None = None) -> tuple[str, bool]:
    """``(activation type, reduce_range)`` for ONNX Runtime's quantizer on this CPU.

    ``auto``: ``uint8`` on x86 (U8S8 is what its int8 kernels are built for), ``int8`` on ARM (S8S8:
    ``sdot`` where the dot-product extension exists) and elsewhere ``uint8``. ``reduce_range`` (7-bit
    weights) only for uint8 on x86 without VNNI, whose ``VPMADDUBSW`` pairs would saturate 16 bits.
    """
    if choice not in ("auto", "uint8", "int8"):
        raise ValueError(f"activations must be auto, uint8 or int8, got {choice!r}")
    machine = platform.machine() if machine is None else machine
    act = choice if choice != "auto" else ("int8" if is_arm(machine) else "uint8")
    reduce_range = act == "uint8" and is_x86(machine) and not (VNNI_FLAGS & set(flags))
    return act, reduce_range


def float_head_nodes(graph: Any, compute_ops: Iterable[str], *, last_compute: bool = True) -> frozenset[str]:
    """Names of the nodes of an ONNX ``GraphProto`` that decode the outputs, to keep in float.

    Every node reached backwards from a graph output through nodes that are not ``compute_ops``; the walk
    stops at the first ``compute_ops`` node on each path (the layer whose output *is* a box offset, class
    logit, mask coefficient or prototype), which is included when ``last_compute`` (else it is quantized and
    only its output is dequantized into the float decode). Nodes under ``/dfl/`` are always included and
    walked through (the DFL's own Conv is decode, not network). Shape-only inputs are not followed.
    """
    compute = frozenset(compute_ops)
    producer = {out: node for node in graph.node for out in node.output}
    keep: set[str] = {node.name for node in graph.node if DFL_MARK in node.name}
    seen: set[str] = set()
    stack = [out.name for out in graph.output]
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in compute and DFL_MARK not in node.name:
            if last_compute:
                keep.add(node.name)
            continue
        keep.add(node.name)
        if node.op_type not in _NO_DATA_INPUTS:
            stack.extend(name for name in node.input if name)
    return frozenset(keep)
