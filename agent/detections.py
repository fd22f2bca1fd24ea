"""What a decode returns: the instances found in one frame (:class:`Detections`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Detections"]


@dataclass(frozen=True, slots=True, eq=False)
class Detections:
    """Instances found in one frame, in the frame's own pixels, sorted by confidence, highest first.

    ``eq=False``: arrays have no single truth value, so instances compare by identity.
    """

    boxes_xyxy: NDArray[np.float32]  # (n, 4) x1, y1, x2, y2
    confidence: NDArray[np.float32]  # (n,) 0..1, descending
    class_id: NDArray[np.int64]  # (n,)
    polygons: list[NDArray[np.float32]]  # n arrays of (k, 2) x, y with k >= 3
    # Opt-in (agent.polygons.PolygonOptions.rings): per instance, every part and hole of its mask as
    # agent.polygons.Ring, (vertices (k, 2), parent index or -1 for a part), largest part first; None: not asked.
    rings: list[list[tuple[NDArray[np.float32], int]]] | None = None

    def __post_init__(self) -> None:
        n = self.confidence.shape[0] if self.confidence.ndim == 1 else -1
        if (
            n < 0
            or self.boxes_xyxy.shape != (n, 4)
            or self.class_id.shape != (n,)
            or len(self.polygons) != n
            or (self.rings is not None and len(self.rings) != n)
        ):
            raise ValueError(
                "Detections: inconsistent shapes: boxes_xyxy "
                f"{self.boxes_xyxy.shape}, confidence {self.confidence.shape}, "
                f"class_id {self.class_id.shape}, {len(self.polygons)} polygons"
                + ("" if self.rings is None else f", {len(self.rings)} ring lists")
            )

    @staticmethod
    def empty() -> Detections:
        return Detections(
            boxes_xyxy=np.zeros((0, 4), dtype=np.float32),
            confidence=np.zeros((0,), dtype=np.float32),
            class_id=np.zeros((0,), dtype=np.int64),
            polygons=[],
        )

    @staticmethod
    def empty_with_rings() -> Detections:
        """:meth:`empty` of a decode asked for every part and hole (``rings`` an empty list, not None)."""
        none = Detections.empty()
        return Detections(none.boxes_xyxy, none.confidence, none.class_id, [], rings=[])

    def __len__(self) -> int:
        return int(self.confidence.shape[0])
