"""One side of ``benchmarks/ab.py``: a process that imports ``agent`` from the tree it is given and times calls.

    python benchmarks/ab_worker.py ROOT

``ROOT`` holds an ``agent/`` package (the working tree, or a baseline commit's ``agent/`` unpacked by
``git archive``); it goes first on ``sys.path``, so every ``agent`` import in this process, the package's own
included, is that tree's. Nothing of the working tree is imported here before that.

Protocol (pickles on stdin/stdout, one request, one reply): ``("set", name, "module:function", args, kwargs)``
binds a call; ``("check", name)`` runs it once and returns its result as plain arrays (comparable between
trees whose classes differ); an argument ``("__made_by__", "module:function", args, kwargs)`` is made by this tree's
own function (a value of one of its classes); ``("time", name)`` runs it once and returns the milliseconds;
``("quit",)`` ends it.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO


def _resolve(target: str) -> Callable[..., Any]:
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)  # type: ignore[no-any-return]


def _made(value: Any) -> Any:
    """``("__made_by__", "module:function", args, kwargs)`` (an argument of this tree's own class) made here,
    its own arguments first."""
    if isinstance(value, tuple) and len(value) == 4 and value[0] == "__made_by__":
        args = [_made(a) for a in value[2]]
        kwargs = {k: _made(v) for k, v in value[3].items()}
        return _resolve(value[1])(*args, **kwargs)
    return value


def _plain(result: Any) -> Any:
    """Detections as ``(boxes, confidence, class_id, polygons)``; arrays and lists as they are."""
    if hasattr(result, "boxes_xyxy") and hasattr(result, "polygons"):
        return (result.boxes_xyxy, result.confidence, result.class_id, list(result.polygons))
    return result


def _limit_threads() -> None:
    """One thread for OpenCV and OpenBLAS, as the agent runs (older trees: OpenCV's pool only)."""
    try:
        from agent.runtime import limit_helper_threads
    except ImportError:
        try:
            from agent.model import limit_helper_threads
        except ImportError:
            import cv2

            cv2.setNumThreads(1)
            return
    limit_helper_threads()


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    calls: dict[str, Callable[[], Any]] = {}
    while True:
        request = pickle.load(requests)
        kind = request[0]
        reply: Any
        if kind == "quit":
            return
        if kind == "set":
            _, name, target, args, kwargs = request
            made_args = [_made(a) for a in args]
            made_kwargs = {k: _made(v) for k, v in kwargs.items()}
            calls[name] = partial(_resolve(target), *made_args, **made_kwargs)
            reply = True
        elif kind == "check":
            reply = _plain(calls[request[1]]())
        elif kind == "time":
            call = calls[request[1]]
            t0 = time.perf_counter()
            call()
            reply = (time.perf_counter() - t0) * 1000
        else:
            reply = ValueError(f"unknown request {kind!r}")
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    replies = sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever the code under test prints stays out of the replies
    _limit_threads()
    serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
