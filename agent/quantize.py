"""``seg-agent quantize``: an int8 copy of a local model, written only when it keeps its accuracy.

ONNX Runtime static quantization in QDQ form (``onnxruntime.quantization.quantize_static``), after
``quant_pre_process`` (shape inference and graph clean-up). What is quantized, and why:

* The convolutions (``Conv``, ``MatMul``, ``Gemm``: the arithmetic int8 speeds up) and the ops between
  them (SiLU's Sigmoid and Mul, ReLU, Add, Concat, Resize, MaxPool), so a tensor stays int8 from one layer
  to the next; ``--ops Conv,MatMul,Gemm`` quantizes only the arithmetic (a DequantizeLinear/QuantizeLinear pair
  then sits around every activation). Never the decode head: Ultralytics' full-graph int8 (head included,
  one scale for box pixels and class scores in one tensor) gave mAP 0 (ultralytics #25045).
* First the box/class decode is taken out of the graph (:mod:`agent.head_cut`, as ``seg-agent optimize``
  does; ``--keep-head`` skips it): an Ultralytics YOLOv8/YOLO11-seg export's ``/dfl/`` softmax and
  dist2bbox over every anchor, or the demo architecture's box arithmetic, cost the same in fp32 and int8
  (float either way), so they are done in NumPy on the candidates only (:mod:`agent.decoders_split`); the
  demo's three output convolutions per level become one float matrix product (:mod:`agent.head_pack`). A
  head it does not know exactly (YOLOv5, RF-DETR, a dynamic input size) is said and quantized as it is.
* What is left of the decode head stays in float: every node reachable backwards from a graph output
  without passing a ``Conv``/``MatMul``/``Gemm`` (in an uncut graph the final Concat/Sigmoid/Mul of boxes
  and classes, the mask coefficients' Concat), everything under ``/dfl/``, and the last
  ``Conv``/``MatMul``/``Gemm`` before each output (the layers whose outputs *are* the box offsets, class
  logits, mask coefficients and prototypes: a coarse grid there moves every box and every mask edge).
  ``--head-convs int8`` quantizes those last layers too (only their outputs are dequantized): measured,
  not the default (benchmarks/NOTES.md).
* Calibration takes the frames a chunk at a time (:data:`CALIBRATION_MEMORY_BYTES` of activations), so a
  640 model calibrates in under a gigabyte. The agent runs a file with this module's ``quantization``
  metadata without ONNX Runtime's NCHWc pass (:data:`agent.runtime.INT8_CPU_DISABLED_OPTIMIZERS`).
* Weights are signed int8, per output channel. Activations are ``uint8`` on x86 (ONNX Runtime's fast
  U8S8 kernels: ``VPDPBUSD`` with AVX-512 VNNI / AVX-VNNI, ``VPMADDUBSW`` without, where weights keep 7
  bits, ``reduce_range``, so the 16-bit sums cannot saturate) and ``int8`` on ARM (S8S8: ``sdot`` on cores
  with the dot-product extension, e.g. a Pi 5's Cortex-A76; a Pi 4's Cortex-A72 has none and runs
  widening multiplies instead). ``--activations`` overrides the choice.

Calibration frames are prepared exactly as :meth:`agent.model.OnnxModel.detect` prepares them (the same
letterbox or Roboflow preprocessing, the model's own input size). Both models are then scored with
:func:`agent.evaluate.evaluate` (COCO mask AP of the published polygons) on held-out frames: the annotated
set's held-out part, ``--eval-images``/``--annotations``, or, when there are no annotations (a video, a
plain folder), the fp32 model's own detections on the held-out frames as the reference. The int8 file is
written only when mask AP@[.5:.95] drops by at most ``--max-drop`` points, unless ``--force``.

``onnx`` (and ``sympy``, for the shape inference) are needed here only: ``pip install 'seg-agent[quantize]'``.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.calibration import CalibrationReader, Sample, load_samples, model_tensor, split_holdout
from agent.quantize_check import EvalSet, gate, reference_set, speed_line, subset_annotations
from agent.quantize_graph import cpu_flags, float_head_nodes, pick_activations
from agent.quantize_input import input_overrides, to_uint8_input

if TYPE_CHECKING:
    from agent.evaluate import EvalReport
    from agent.model import OnnxModel

__all__ = [
    "QuantizeError",
    "activation_bytes",
    "calibration_chunk",
    "gate",
    "main_quantize",
    "quantize_model",
    "reference_set",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
INSTALL_HINT = "pip install 'seg-agent[quantize]' (or: pip install onnx sympy)"
QUANTIZED_OPS = (
    "Conv",
    "MatMul",
    "Gemm",
    "Sigmoid",
    "Mul",
    "Add",
    "Concat",
    "Resize",
    "MaxPool",
    "Split",
    "Relu",
    "Clip",
    "LeakyRelu",
)
"""Quantized by default: the arithmetic int8 speeds up (Conv, MatMul, Gemm) and the ops between two such
layers (SiLU is Sigmoid x Mul; residual Add, Concat, upsampling, pooling, the C2f blocks' Split; ReLU and
ReLU6/Clip, which the quantizer folds into the convolution's output range, and LeakyReLU, one uint8 table),
so that a tensor stays int8 from one convolution to the next instead of a DequantizeLinear/QuantizeLinear
pair around every activation (demo model, 1 thread: Conv-only 1.17x fp32, this list 1.52x, the same mask
AP; a 640 YOLOv8n-seg: 1.54x without Split, whose 9 float islands took 5 % of the int8 run, 1.66x with it;
the demo network with ReLU: without Relu in the list a DequantizeLinear/QuantizeLinear pair stayed around
each of its 27 activations, 6.9 against 5.5 ms at 2 threads)."""
HEAD_CONVS = "float"
"""The last Conv/MatMul/Gemm before each output (``--head-convs``): ``float`` keeps their weights and
outputs in float; ``int8`` quantizes them too, so only their outputs are dequantized into the float decode."""
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
"""Layers whose outputs the decode reads: the last of them before each output stays in float."""
CALIBRATION_MEMORY_BYTES = 1 << 29
"""The float activations the calibration may hold at once (512 MiB): ONNX Runtime's calibrator keeps every
tensor of every frame of a chunk and copies them while histogramming. A 640 YOLOv8n-seg has 0.28 GB of
activations per frame: all 120 calibration frames at once took 20 GB and were killed for memory on a 23 GB
machine (the 416 demo model: 52 MB per frame, 6 GB at once)."""
MAX_CHUNK_FRAMES = 16


class QuantizeError(Exception):
    """A failure to report as ``seg-agent quantize: error: ...`` with an exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------------------ quantizing


def _import_onnx() -> Any:
    """``onnx``, after checking that it and ``sympy`` (quant_pre_process's symbolic shape inference) import."""
    modules = []
    for name in ("onnx", "sympy"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise QuantizeError(f"seg-agent quantize needs the {name} package: {INSTALL_HINT}") from None
    return modules[0]


@dataclass(frozen=True)
class QuantizePlan:
    """What :func:`quantize_model` did: the activation type, the ops, the nodes kept in float."""

    activations: str
    reduce_range: bool
    head_convs: str
    op_types: tuple[str, ...]
    float_nodes: tuple[str, ...]
    quantized_nodes: int


def quantize_model(
    model_path: Path,
    out_path: Path,
    model: OnnxModel,
    samples: Sequence[Sample],
    *,
    activations: str = "auto",
    op_types: Sequence[str] = QUANTIZED_OPS,
    method: str = "percentile",
    head_convs: str = HEAD_CONVS,
    uint8_input: bool = True,
) -> QuantizePlan:
    """Write the QDQ int8 model of ``model_path`` (loaded as ``model``) to ``out_path``, calibrated on
    ``samples``. The original's metadata (class names, input size) is carried over. ``uint8_input``: a uint8
    image input where exact (uint8 activations; :mod:`agent.quantize_input`)."""
    onnx = _import_onnx()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    act, reduce_range = pick_activations(activations, cpu_flags())
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    methods["entropy"] = CalibrationMethod.Entropy
    with tempfile.TemporaryDirectory(prefix="seg-agent-quantize-") as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(model_path), str(prepped), skip_symbolic_shape=False)
        graph = onnx.load(str(prepped))
        if _name_nodes(graph.graph):  # exclusion goes by node name
            onnx.save(graph, str(prepped))
        if head_convs not in ("float", "int8"):
            raise ValueError(f"head_convs must be float or int8, got {head_convs!r}")
        keep_float = float_head_nodes(graph.graph, COMPUTE_OPS, last_compute=head_convs == "float")
        ops = tuple(op_types)
        quantized = [n for n in graph.graph.node if n.name not in keep_float and (not ops or n.op_type in ops)]
        input_name = graph.graph.input[0].name
        quantize_static(
            str(prepped),
            str(Path(tmp) / "int8.onnx"),
            CalibrationReader(model, input_name, samples),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ops) or None,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(keep_float),
            calibrate_method=methods[method],
            extra_options={
                **_chunk_options(calibration_chunk(graph.graph), len(samples)),
                **input_overrides(input_name, act, unit_range=model.preprocessing.mean is None),
            },
        )
        result = onnx.load(str(Path(tmp) / "int8.onnx"))
        original = onnx.load(str(model_path), load_external_data=False)
        _carry_metadata(result, original, f"int8 QDQ, {act} activations, per-channel int8 weights")
        if uint8_input:
            to_uint8_input(result)  # the frame's bytes as the input where that is exact
        out_path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(result, str(out_path))
    return QuantizePlan(act, reduce_range, head_convs, ops or ("all",), tuple(sorted(keep_float)), len(quantized))


def activation_bytes(graph: Any) -> int:
    """Bytes of one frame's float activations in a shape-inferred ONNX ``GraphProto`` (value_info and
    outputs with static shapes; tensors of unknown size count 0)."""
    total = 0
    for info in [*graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        dims = [d.dim_value for d in tensor.shape.dim]
        if tensor.elem_type == 1 and dims and all(d > 0 for d in dims):  # FLOAT
            total += 4 * int(np.prod(dims))
    return total


def calibration_chunk(graph: Any, budget: int = CALIBRATION_MEMORY_BYTES) -> int:
    """Frames per calibration chunk: as many as fit in ``budget`` bytes of activations, 1 to 16."""
    per_frame = activation_bytes(graph)
    return MAX_CHUNK_FRAMES if per_frame <= 0 else max(1, min(MAX_CHUNK_FRAMES, budget // per_frame))


def _chunk_options(chunk: int, frames: int) -> dict[str, int]:
    """ONNX Runtime's options that calibrate ``chunk`` frames at a time. Its histogram calibrators
    (percentile, entropy) ignore ``CalibMaxIntermediateOutputs`` and hold every frame's activations at once;
    ``CalibStridedMinMax`` (despite its name, for any method) feeds them a stride at a time, merging the
    histograms, but the stride must divide the frame count: the largest divisor up to ``chunk``."""
    stride = next(d for d in range(max(1, min(chunk, frames)), 0, -1) if frames % d == 0) if frames else 1
    return {"CalibMaxIntermediateOutputs": chunk, "CalibStridedMinMax": stride}


def _name_nodes(graph: Any) -> bool:
    taken = {n.name for n in graph.node if n.name}
    renamed = False
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name, renamed = name, True
            taken.add(name)
    return renamed


def _carry_metadata(result: Any, original: Any, description: str) -> None:
    props = {p.key: p.value for p in original.metadata_props}
    props["quantization"] = description
    del result.metadata_props[:]
    for key, value in props.items():
        entry = result.metadata_props.add()
        entry.key, entry.value = key, value


# ------------------------------------------------------------------------------------------ evaluating


def _evaluate(model: OnnxModel, eval_set: EvalSet, confidence: float, overlap: float) -> EvalReport:
    from agent.evaluate import evaluate

    try:
        return evaluate(
            model,
            eval_set.images,
            eval_set.annotations,
            confidence=confidence,
            overlap=overlap,
            progress=sys.stderr.isatty(),
        )
    except ImportError as exc:
        raise QuantizeError(f"{exc} (the AP check needs it)") from None
    except (OSError, ValueError) as exc:
        raise QuantizeError(f"evaluation: {exc}") from None


# ------------------------------------------------------------------------------------------ the command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seg-agent quantize",
        description=(
            "Write an int8 (ONNX Runtime static QDQ) copy of an ONNX model, calibrated on frames prepared as "
            "the agent prepares them, after checking its mask AP against the fp32 model's on held-out frames. "
            f"Needs: {INSTALL_HINT}."
        ),
        epilog="Exit status: 0 written, 1 refused (AP dropped too far) or failed, 2 usage error.",
    )
    p.add_argument("model", help="fp32 ONNX model file")
    p.add_argument("--images", required=True, help="calibration frames: a directory of images or a video file")
    p.add_argument("--out", required=True, help="the int8 model to write (.onnx)")
    p.add_argument("--frames", type=int, default=None, help="use at most N frames of the source, spread evenly")
    p.add_argument(
        "--annotations",
        default=None,
        help="COCO annotations: of --eval-images if given, else of --images (its held-out part is scored)",
    )
    p.add_argument("--eval-images", default=None, help="directory of annotated images to score both models on")
    p.add_argument(
        "--holdout", type=float, default=0.25, help="share of --images kept out of calibration (default 0.25)"
    )
    p.add_argument("--max-drop", type=float, default=1.0, help="largest mask AP@[.5:.95] loss, points (default 1)")
    p.add_argument("--force", action="store_true", help="write the model even when AP dropped more")
    p.add_argument("--activations", choices=["auto", "uint8", "int8"], default="auto", help="default: per CPU")
    p.add_argument(
        "--method",
        choices=["minmax", "percentile", "entropy"],
        default="percentile",
        help="calibration (default %(default)s: robust to few frames; minmax lost 4 points on 18 demo frames)",
    )
    p.add_argument(
        "--ops",
        default=",".join(QUANTIZED_OPS),
        help="op types to quantize, comma-separated, or 'all' (default: %(default)s)",
    )
    p.add_argument(
        "--head-convs",
        choices=["float", "int8"],
        default=HEAD_CONVS,
        help="the last convolution before each output (box, class, mask coefficients, prototypes): kept in float, "
        "or in int8 with only its output dequantized (default %(default)s)",
    )
    p.add_argument(
        "--keep-head",
        action="store_true",
        help="quantize the graph as it is; default: first take the box/class decode out of a YOLOv8/YOLO11-seg "
        "or demo graph (as seg-agent optimize does), so the int8 file has no float DFL softmax",
    )
    p.add_argument(
        "--float-input",
        action="store_true",
        help="keep the float image input; default: where exact (uint8 activations), the file takes the frame's "
        "bytes as a uint8 input (no input QuantizeLinear, no float letterbox)",
    )
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads for the checks, 0 = automatic")
    p.add_argument("--speed-runs", type=int, default=30, help="session runs per model for the speed ratio")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.frames is not None and args.frames < 1:
        raise QuantizeError(f"--frames must be >= 1, got {args.frames}", EXIT_USAGE)
    if not 0 <= args.holdout < 1:
        raise QuantizeError(f"--holdout must be in [0, 1), got {args.holdout}", EXIT_USAGE)
    if args.max_drop < 0:
        raise QuantizeError(f"--max-drop must be >= 0 points, got {args.max_drop}", EXIT_USAGE)
    if args.eval_images is not None and args.annotations is None:
        raise QuantizeError("--eval-images needs --annotations", EXIT_USAGE)
    if Path(args.model).is_dir():
        raise QuantizeError(f"{args.model}: quantize takes an .onnx file, not a package directory", EXIT_USAGE)
    if Path(args.out).resolve() == Path(args.model).resolve():
        raise QuantizeError("--out must not be the model itself", EXIT_USAGE)


def _op_types(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "all":
        return ()
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _eval_set(args: argparse.Namespace, fp32: OnnxModel, held: list[Sample], tmp: Path) -> EvalSet:
    if args.eval_images is not None:
        return EvalSet(Path(args.eval_images), Path(args.annotations), "annotations")
    if not held:
        raise QuantizeError(
            "nothing to score the models on: no frame of --images is held out (--holdout, or too few frames) "
            "and no --eval-images",
            EXIT_USAGE,
        )
    if args.annotations is not None:
        if Path(args.images).is_file():
            raise QuantizeError("--annotations of a video: give --eval-images with them", EXIT_USAGE)
        subset = subset_annotations(Path(args.annotations), {s.name for s in held}, tmp / "held_out.json")
        return EvalSet(Path(args.images), subset, "annotations")
    return reference_set(fp32, held, tmp / "reference")


def _print_flags() -> None:
    flags = cpu_flags()
    shown = [f for f in sorted(flags) if f.startswith(("avx", "amx", "asimd", "sve", "i8mm", "dotprod"))]
    print(f"cpu          {platform.machine()}: {' '.join(shown) or 'no vector flags listed'}")


def _report_line(label: str, fp32: float, int8: float) -> str:
    return f"{label:<22}{fp32:8.3f}{int8:8.3f}{100 * (int8 - fp32):+9.2f}"


def _cut_head(model: Path, out: Path) -> Path:
    """``out``, the model without its box/class decode (:mod:`agent.head_cut`), or ``model`` where the head is
    not a known one (a YOLOv5 or RF-DETR graph, an export with a dynamic input size): said, then quantized as is."""
    from agent.head_cut import HeadCutError, cut_file, describe
    from agent.runtime import first_line

    try:
        done = cut_file(model, out)
    except HeadCutError as exc:
        print(f"head         kept in the graph ({exc})")
        return model
    except Exception as exc:  # onnx or ONNX Runtime failing on the graph: quantize it as it is, and say why
        print(f"head         kept in the graph (the cut failed: {first_line(exc)})")
        return model
    print(f"head cut     {describe(done)}")
    return out


def _calibrate(args: argparse.Namespace, fp32: OnnxModel, calibration: list[Sample], candidate: Path) -> None:
    from agent.runtime import first_line

    source = Path(args.model) if args.keep_head else _cut_head(Path(args.model), candidate.with_name("cut.onnx"))
    print(f"calibrating  on {len(calibration)} frames of {args.images}", flush=True)
    try:
        plan = quantize_model(
            source,
            candidate,
            fp32,
            calibration,
            activations=args.activations,
            op_types=_op_types(args.ops),
            method=args.method,
            head_convs=args.head_convs,
            uint8_input=not args.float_input,
        )
    except QuantizeError:
        raise
    except Exception as exc:  # ONNX Runtime's quantizer raises anything from ValueError to RuntimeError
        raise QuantizeError(f"quantization failed: {first_line(exc)}") from exc
    print(
        f"quantized    {plan.quantized_nodes} nodes ({', '.join(plan.op_types)}), {plan.activations} "
        f"activations{' (reduce_range)' if plan.reduce_range else ''}, {len(plan.float_nodes)} head nodes in float "
        f"(the head's last convolutions in {plan.head_convs})"
    )


def _run(args: argparse.Namespace) -> int:
    from agent.model import ModelError, OnnxModel, limit_helper_threads

    _check_args(args)
    _import_onnx()
    limit_helper_threads()
    try:
        fp32 = OnnxModel(args.model, threads=args.threads)
    except ModelError as exc:
        raise QuantizeError(f"{exc}", EXIT_USAGE) from None
    try:
        samples = load_samples(args.images, args.frames)
    except ValueError as exc:
        raise QuantizeError(f"--images {exc}", EXIT_USAGE) from None
    calibration, held = split_holdout(samples, 0 if args.eval_images else args.holdout)
    _print_flags()
    with tempfile.TemporaryDirectory(prefix="seg-agent-quantize-") as tmp_name:
        tmp = Path(tmp_name)
        eval_set = _eval_set(args, fp32, held, tmp)
        candidate = tmp / "candidate.onnx"
        _calibrate(args, fp32, calibration, candidate)
        int8 = OnnxModel(candidate, threads=args.threads)
        tensor = model_tensor(fp32, calibration[0].image_bgr)
        print(speed_line(fp32, int8, Path(args.model), candidate, tensor, args.speed_runs))
        print(f"scoring      on {eval_set.images} against {eval_set.reference}", flush=True)
        before = _evaluate(fp32, eval_set, 0.01, 0.5)
        after = _evaluate(int8, eval_set, 0.01, 0.5)
        print(f"{'':22}{'fp32':>8}{'int8':>8}{'points':>9}")
        print(_report_line("mask AP@[.5:.95]", before.mask_ap, after.mask_ap))
        print(_report_line("mask AP@0.5", before.mask_ap50, after.mask_ap50))
        print(_report_line("box AP@[.5:.95]", before.box_ap, after.box_ap))
        print(f"{'detect ms/image':<22}{before.ms_per_image:8.1f}{after.ms_per_image:8.1f}")
        accepted, drop = gate(before.mask_ap, after.mask_ap, args.max_drop)
        if not accepted and not args.force:
            raise QuantizeError(
                f"not written: mask AP@[.5:.95] dropped {drop:.2f} points (> --max-drop {args.max_drop:g}); "
                "try more or more varied calibration frames, another --method, or --force to write it anyway"
            )
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(candidate, out)
    note = " (forced past the AP check)" if not accepted else ""
    print(f"wrote        {out}{note}")
    return EXIT_OK


def main_quantize(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _run(args)
    except QuantizeError as exc:
        print(f"seg-agent quantize: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main_quantize())
