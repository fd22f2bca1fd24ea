"""training/: one optimiser step on freshly rendered frames, then an export the agent can load.

Needs the ``train`` extra (torch); skipped without it. The real run is documented in training/README.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")


@pytest.mark.parametrize("act", ["silu", "relu"])
def test_one_step_and_export(tmp_path: Path, act: str) -> None:
    from training import train as tr
    from training.net import SegNet

    samples = [tr.make_sample(i, 128, seed=99) for i in range(4)]
    batch = tr.collate([tr.augment(s, __import__("random").Random(0)) for s in samples])
    assert batch.images.shape == (4, 3, 128, 128) and batch.masks.shape[-2:] == (32, 32)
    net = SegNet(act=act)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss, stats = tr.compute_loss(net(batch.images), batch)
    assert torch.isfinite(loss) and set(stats) == {"box", "cls", "mask", "dice"}
    opt.zero_grad()
    loss.backward()
    opt.step()

    out = tmp_path / "m.onnx"
    tr.export_onnx(net.eval(), out, 128)
    import onnx

    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ("Relu" in ops) is (act == "relu") and ops.count("Sigmoid") == (1 if act == "relu" else 1 + 27)

    from agent.model import OnnxModel

    model = OnnxModel(out)
    assert model.class_names == ["circle", "rectangle", "triangle"]
    assert model.input_hw == (128, 128)
    o0, o1 = model.run(np.zeros((1, 3, 128, 128), np.float32))
    assert o0.shape == (1, 4 + 3 + 32, (16 * 16 + 8 * 8 + 4 * 4)) and o1.shape == (1, 32, 32, 32)
    frame = np.full((90, 160, 3), 127, np.uint8)
    det = model.detect(frame, confidence=0.0, overlap=0.5, max_detections=5)
    assert len(det.polygons) <= 5


def test_cli_runs_one_iteration(tmp_path: Path) -> None:
    from training import train as tr

    out = tmp_path / "cli.onnx"
    rc = tr.main(
        [
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
            "--ckpt",
            "",
            "--n-train",
            "4",
            "--iters",
            "1",
            "--batch",
            "2",
            "--imgsz",
            "128",
            "--export-imgsz",
            "160",
            "--anneal",
            "0",
            "--workers",
            "1",
        ]
    )
    assert rc == 0 and out.is_file()

    from agent.model import OnnxModel

    assert OnnxModel(out).input_hw == (160, 160)
