"""The ``seg-agent`` command: argument parsing and wiring only.

Exit statuses: 0 success, 1 a failure while running, 2 a usage or configuration error (the message
names the key and the reason; no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from agent import __version__

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from agent.config import Settings

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CliError(Exception):
    """An error to print as ``seg-agent: error: ...`` with an exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seg-agent",
        description=(
            "Edge-device streaming agent for instance segmentation: captures camera frames, infers with "
            "Roboflow's hosted API while online and a local ONNX model when not, and publishes every result "
            "over MQTT as the API's JSON."
        ),
        epilog="Exit status: 0 success, 1 failure while running, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"seg-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_daemon_commands(sub)
    _add_model_commands(sub)
    synth = sub.add_parser(
        "synth",
        add_help=False,
        help="synthetic shapes: a COCO set to evaluate on (synth coco DIR) or the demo video (synth video OUT.avi)",
    )
    synth.add_argument("synth_args", nargs=argparse.REMAINDER)
    sub.add_parser("quantize", add_help=False, help="an int8 copy of a model, checked for mask AP (--help: options)")
    sub.add_parser("optimize", add_help=False, help="a copy of a model with its box decode moved out of the graph")
    return parser


def _add_daemon_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """run, check-config, watch: the commands that take a configuration file."""
    run = sub.add_parser("run", help="run the daemon (capture, infer, publish) until SIGTERM/SIGINT")
    run.add_argument("--config", "-c", default="config.yaml", help="configuration file (default: %(default)s)")
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="override the configuration's log_level",
    )

    check = sub.add_parser(
        "check-config", help="validate a configuration and print the effective settings (secrets masked)"
    )
    check.add_argument("--config", "-c", default="config.yaml", help="configuration file (default: %(default)s)")
    watch = sub.add_parser(
        "watch", help="print what an agent publishes on its broker, one readable line per message, until Ctrl-C"
    )
    watch.add_argument("--config", "-c", default="config.yaml", help="the agent's configuration (default: %(default)s)")
    watch.add_argument("--raw", action="store_true", help="print each message's topic and payload as they came")


def _add_model_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """infer, eval: the commands that run a local model."""
    infer = sub.add_parser("infer", help="run images through the local model; one API-format JSON line per image")
    infer.add_argument(
        "--model", "-m", required=True, help="ONNX model file or Roboflow package directory (see README: Local models)"
    )
    infer.add_argument("images", nargs="+", help="image files")
    infer.add_argument(
        "--confidence", type=float, default=40.0, help="threshold, 0-100 (below 1: a fraction); default %(default)s"
    )
    infer.add_argument(
        "--overlap",
        type=float,
        default=30.0,
        help="NMS IoU threshold, 0-100 (below 1: a fraction); default %(default)s",
    )
    infer.add_argument("--max-detections", type=int, default=300, help="default: %(default)s")
    infer.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads, 0 = automatic")

    ev = sub.add_parser("eval", help="COCO box and mask mAP of a local model on an annotated image set")
    ev.add_argument("--model", "-m", required=True, help="ONNX model")
    ev.add_argument("--images", help="directory of images")
    ev.add_argument("--annotations", help="COCO-format annotations JSON")
    ev.add_argument("--tracks", nargs="+", help="instead: IDF1/MOTA of the tracker on clips (synth video --tracks)")
    ev.add_argument(
        "--confidence",
        type=float,
        default=None,
        help="threshold, 0-100 (below 1: a fraction); default 1 (--tracks: 40)",
    )
    ev.add_argument(
        "--overlap",
        type=float,
        default=None,
        help="NMS IoU threshold, 0-100 (below 1: a fraction); default 50 (--tracks: 30)",
    )
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["synth"]:  # its own parser (agent.synth), --help included
        from agent.synth import main_synth

        return main_synth(argv[1:])
    if argv[:1] == ["quantize"]:  # its own parser (agent.quantize), --help included
        from agent.quantize import main_quantize

        return main_quantize(argv[1:])
    if argv[:1] == ["optimize"]:  # its own parser (agent.optimize)
        from agent.optimize import main_optimize

        return main_optimize(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(Path(args.config), args.log_level)
        if args.command == "check-config":
            return _check_config(Path(args.config))
        if args.command == "infer":
            return _infer(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "watch":
            return _watch(Path(args.config), raw=args.raw)
    except CliError as exc:
        print(f"seg-agent: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)


def _load(path: Path) -> Settings:
    from agent.config import ConfigError, load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        raise CliError(f"{path}: {exc}") from None


def _check_config(path: Path) -> int:
    from agent.config import settings_summary

    settings = _load(path)
    json.dump(settings_summary(settings), sys.stdout, indent=2)
    print()
    if settings.inference.mode != "serverless" and settings.inference.local.model is not None:
        print(_check_model(settings), file=sys.stderr)
    print(f"{path}: OK", file=sys.stderr)
    return EXIT_OK


def _check_model(settings: Settings) -> str:
    """Loads the local model as ``run`` would: a file that only looks like a model fails here, not at run."""
    from agent.model import OnnxModel
    from agent.pipeline import StartupError, open_local_model

    try:
        loaded, _, plan = open_local_model(settings)  # sessions: auto decided (and measured) as at start
    except StartupError as exc:
        raise CliError(str(exc)) from None
    model = loaded if isinstance(loaded, OnnxModel) else loaded.models[0]
    names = model.class_names
    shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
    return (
        f"inference.local.model: {model.path}: {model.layout.kind} model, input {model.input_hw[1]}x"
        f"{model.input_hw[0]}, {len(names)} classes ({shown}), providers {', '.join(model.providers)}; "
        f"{plan.describe()}"
    )


def _run(path: Path, log_level: str | None) -> int:
    settings = _load(path)  # a bad configuration fails before anything heavy is imported

    import faulthandler

    from agent.daemon import Agent, StartupError
    from agent.logs import add_secret, setup_logging

    faulthandler.enable()  # a watchdog kill (SIGABRT) prints every thread's stack to the journal

    for secret in (settings.inference.serverless.api_key, settings.mqtt.password):
        if secret:
            add_secret(secret.reveal())
    setup_logging(log_level or settings.log_level)
    agent = Agent(settings)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("agent").info("received %s", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return agent.run()
    except StartupError as exc:
        raise CliError(str(exc)) from None


def _infer(args: argparse.Namespace) -> int:
    import time

    from agent.config import percent
    from agent.model import ModelError, OnnxModel, limit_helper_threads
    from agent.results import detections_to_api, encode

    for name in ("confidence", "overlap"):
        if not 0 <= getattr(args, name) <= 100:
            raise CliError(f"--{name}: {getattr(args, name)} is out of range [0, 100]")
        setattr(args, name, percent(getattr(args, name)))
    limit_helper_threads()  # as the daemon runs: the cores are ONNX Runtime's
    try:
        model = OnnxModel(args.model, threads=args.threads)
    except ModelError as exc:
        raise CliError(f"--model: {exc}") from None
    status = EXIT_OK
    for image_path in args.images:
        try:
            image = _read_image(Path(image_path))
        except CliError as exc:
            print(f"seg-agent: error: {image_path}: {exc}", file=sys.stderr)
            status = EXIT_FAILURE
            continue
        start = time.perf_counter()
        det = model.detect(
            image,
            confidence=args.confidence / 100,
            overlap=args.overlap / 100,
            max_detections=args.max_detections,
        )
        api = detections_to_api(
            det,
            model.class_names,
            image_wh=(image.shape[1], image.shape[0]),
            time_s=time.perf_counter() - start,
        )
        sys.stdout.buffer.write(encode(api) + b"\n")
        sys.stdout.flush()
    return status


def _watch(path: Path, *, raw: bool) -> int:
    from agent.watch import watch

    settings = _load(path)

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        watch(settings, raw=raw, out=out)
    except OSError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from None
    return EXIT_OK


def _read_image(path: Path) -> NDArray[np.uint8]:
    """The image in ``path`` as BGR; the error says which of the ways a file can fail this one took. The bytes
    are read here, not by ``cv2.imread``, which says only "None" and prints a warning of its own."""
    import cv2
    import numpy as np

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CliError("no such file") from None
    except IsADirectoryError:
        raise CliError("is a directory, not an image file") from None
    except OSError as exc:
        raise CliError(f"cannot read: {exc.strerror or exc}") from None
    if not data:
        raise CliError("empty file (0 bytes)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise CliError(f"not an image OpenCV can decode ({len(data)} bytes; JPEG, PNG, BMP, TIFF, WebP are)")
    return np.asarray(image, np.uint8)


def _eval(args: argparse.Namespace) -> int:
    from agent.config import percent
    from agent.evaluate import evaluate, format_report
    from agent.model import ModelError, OnnxModel, limit_helper_threads

    if args.tracks:  # the tracker's figures (agent/evaluate_tracks.py), thresholds as the daemon's defaults
        from agent.evaluate_tracks import main_eval_tracks

        conf = 40.0 if args.confidence is None else args.confidence
        overlap = 30.0 if args.overlap is None else args.overlap
        try:
            return main_eval_tracks(args.model, args.tracks, percent(conf) / 100, percent(overlap) / 100, args.json)
        except (OSError, ValueError, ImportError) as exc:
            raise CliError(str(exc), EXIT_FAILURE) from None
    args.confidence = 1.0 if args.confidence is None else args.confidence
    args.overlap = 50.0 if args.overlap is None else args.overlap
    if not (args.images and args.annotations):
        raise CliError("eval needs --images and --annotations (or --tracks)")
    limit_helper_threads()  # as the daemon runs: the cores are ONNX Runtime's
    try:
        model = OnnxModel(args.model)
    except ModelError as exc:
        raise CliError(f"--model: {exc}") from None
    try:
        report = evaluate(
            model,
            Path(args.images),
            Path(args.annotations),
            confidence=percent(args.confidence) / 100,
            overlap=percent(args.overlap) / 100,
            limit=args.limit,
        )
    except (OSError, ValueError, ImportError) as exc:
        raise CliError(str(exc), EXIT_FAILURE) from None
    if args.json:
        from dataclasses import asdict

        json.dump(asdict(report), sys.stdout, indent=2, default=str)
        print()
    else:
        print(format_report(report))
    return EXIT_OK
