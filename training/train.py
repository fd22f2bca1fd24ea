"""Train the demo segmentation model on synthetic shapes and export it as a YOLOv8-seg ONNX file.

Reproduce ``models/demo-seg.onnx`` (see training/README.md)::

    nice -n 19 /work/venv-train/bin/python -m training.train --out models/demo-seg.onnx

Frames come from :func:`agent.synth.render_sample` with ``default_rng([TRAIN_SEED, i])`` (seed 0 only),
letterboxed to the model's input like the agent does at inference, and cached under ``runs/cache``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import pickle
import random
import sys
import time
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from agent.synth import CLASS_NAMES, render_sample
from training.net import ACTIVATIONS, N_PROTO, STRIDES, ExportWrapper, SegNet, flatten_outputs

TRAIN_SEED = 0
PAD = 114


# ------------------------------------------------------------------------------------------------- data


def letterbox_params(h: int, w: int, size: int) -> tuple[float, int, int, int, int]:
    """Scale, new width/height and left/top padding: aspect kept, centred."""
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    return r, nw, nh, (size - nw) // 2, (size - nh) // 2


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    _, nw, nh, left, top = letterbox_params(h, w, size)
    out = np.full((size, size, 3), PAD, np.uint8)
    out[top : top + nh, left : left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out


def make_sample(index: int, size: int, seed: int = TRAIN_SEED) -> dict[str, np.ndarray]:
    """One letterboxed RGB training frame with boxes (xyxy, input px) and soft masks at stride 4."""
    cv2.setNumThreads(1)
    rng = np.random.default_rng([seed, index])
    img, instances = render_sample(rng)
    h, w = img.shape[:2]
    r, nw, nh, left, top = letterbox_params(h, w, size)
    lb = letterbox(img, size)[:, :, ::-1].copy()  # RGB
    ms = size // 4
    masks = np.zeros((len(instances), ms, ms), np.uint8)
    boxes = np.zeros((len(instances), 4), np.float32)
    cls = np.zeros(len(instances), np.int64)
    for k, inst in enumerate(instances):
        full = np.zeros((size, size), np.float32)
        full[top : top + nh, left : left + nw] = cv2.resize(
            inst.mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA
        )
        masks[k] = np.round(cv2.resize(full, (ms, ms), interpolation=cv2.INTER_AREA) * 255).astype(np.uint8)
        x, y, bw, bh = inst.bbox_xywh
        boxes[k] = [x * r + left, y * r + top, (x + bw) * r + left, (y + bh) * r + top]
        cls[k] = inst.class_id
    return {"img": lb, "boxes": boxes, "cls": cls, "masks": masks}


def _make_chunk(args: tuple[int, int, int, int]) -> list[dict[str, np.ndarray]]:
    start, stop, size, seed = args
    return [make_sample(i, size, seed) for i in range(start, stop)]


def build_cache(
    cache_dir: Path, n: int, size: int, workers: int, seed: int = TRAIN_SEED
) -> list[dict[str, np.ndarray]]:
    """Render (or load) the training frames; chunks of 250 are pickled under ``cache_dir``."""
    from tqdm import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    chunk = 250
    jobs = [(s, min(s + chunk, n), size, seed) for s in range(0, n, chunk)]
    todo = [j for j in jobs if not (cache_dir / f"s{seed}_{size}_{j[0]}_{j[1]}.pkl").exists()]
    if todo:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers) as pool, tqdm(total=len(todo) * chunk, desc="render", unit="img") as bar:
            for j, samples in zip(todo, pool.imap(_make_chunk, todo), strict=True):
                with open(cache_dir / f"s{seed}_{size}_{j[0]}_{j[1]}.pkl", "wb") as f:
                    pickle.dump(samples, f, protocol=pickle.HIGHEST_PROTOCOL)
                bar.update(len(samples))
    out: list[dict[str, np.ndarray]] = []
    for j in jobs:
        with open(cache_dir / f"s{seed}_{size}_{j[0]}_{j[1]}.pkl", "rb") as f:
            out.extend(pickle.load(f))
    return out


def augment(s: dict[str, np.ndarray], rng: random.Random) -> dict[str, np.ndarray]:
    """Dihedral flips/transposes (exact for our classes) and a colour channel shuffle."""
    img, boxes, masks = s["img"], s["boxes"].copy(), s["masks"]
    size = img.shape[0]
    if rng.random() < 0.5:
        img, masks = img[:, ::-1], masks[:, :, ::-1]
        boxes[:, [0, 2]] = size - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        img, masks = img[::-1], masks[:, ::-1]
        boxes[:, [1, 3]] = size - boxes[:, [3, 1]]
    if rng.random() < 0.5:
        img, masks = img.transpose(1, 0, 2), masks.transpose(0, 2, 1)
        boxes = boxes[:, [1, 0, 3, 2]]
    if rng.random() < 0.5:
        perm = list(range(3))
        rng.shuffle(perm)
        img = img[:, :, perm]
    return {"img": img, "boxes": boxes, "cls": s["cls"], "masks": masks}


@dataclass
class Batch:
    images: Tensor  # (B, 3, S, S) 0..1
    cls: Tensor  # (B, M) long
    boxes: Tensor  # (B, M, 4)
    masks: Tensor  # (B, M, S/4, S/4) 0..1
    valid: Tensor  # (B, M) bool


def collate(samples: list[dict[str, np.ndarray]]) -> Batch:
    b = len(samples)
    m = max(1, max(len(s["cls"]) for s in samples))
    size = samples[0]["img"].shape[0]
    ms = size // 4
    imgs = np.stack([np.ascontiguousarray(s["img"]) for s in samples])
    cls = np.zeros((b, m), np.int64)
    boxes = np.zeros((b, m, 4), np.float32)
    masks = np.zeros((b, m, ms, ms), np.uint8)
    valid = np.zeros((b, m), bool)
    for i, s in enumerate(samples):
        k = len(s["cls"])
        cls[i, :k], boxes[i, :k], masks[i, :k], valid[i, :k] = s["cls"], s["boxes"], s["masks"], True
    images = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0)
    return Batch(
        images,
        torch.from_numpy(cls),
        torch.from_numpy(boxes),
        torch.from_numpy(masks).float().div_(255.0),
        torch.from_numpy(valid),
    )


def batches(data: list[dict[str, np.ndarray]], batch: int, seed: int) -> Iterator[Batch]:
    """Endless shuffled, augmented batches."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(data)))
        rng.shuffle(order)
        for k in range(0, len(order) - batch + 1, batch):
            yield collate([augment(data[i], rng) for i in order[k : k + batch]])


# ------------------------------------------------------------------------------------------------- loss


def box_iou_pairs(a: Tensor, b: Tensor, ciou: bool = False, eps: float = 1e-7) -> Tensor:
    """IoU (or CIoU) of broadcastable xyxy boxes."""
    ix1 = torch.maximum(a[..., 0], b[..., 0])
    iy1 = torch.maximum(a[..., 1], b[..., 1])
    ix2 = torch.minimum(a[..., 2], b[..., 2])
    iy2 = torch.minimum(a[..., 3], b[..., 3])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    union = wa * ha + wb * hb - inter + eps
    iou = inter / union
    if not ciou:
        return iou
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    c2 = cw**2 + ch**2 + eps
    rho2 = (
        (a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) ** 2 + (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) ** 2
    ) / 4
    v = (4 / math.pi**2) * (torch.atan(wb / (hb + eps)) - torch.atan(wa / (ha + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


@torch.no_grad()
def assign(
    scores: Tensor, pboxes: Tensor, anchors: Tensor, b: Batch, topk: int = 10, alpha: float = 0.5, beta: float = 6.0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Task-aligned assignment. Returns fg (B,A), gt index (B,A), target scores (B,A,C), target boxes."""
    bsz, n_a, nc = scores.shape
    gt = b.boxes  # (B, M, 4)
    s = scores.gather(2, b.cls[:, None, :].expand(bsz, n_a, -1)).permute(0, 2, 1)  # (B, M, A)
    ious = box_iou_pairs(gt[:, :, None, :], pboxes[:, None, :, :]).clamp(min=0)  # (B, M, A)
    ax, ay = anchors[:, 0], anchors[:, 1]
    x1, y1, x2, y2 = (gt[..., i, None] for i in range(4))
    inside = (ax > x1) & (ax < x2) & (ay > y1) & (ay < y2) & b.valid[..., None]
    metric = s.pow(alpha) * ious.pow(beta)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    d2 = ((ax - cx) ** 2 + (ay - cy) ** 2) / ((x2 - x1) ** 2 + (y2 - y1) ** 2 + 1e-6)
    sel = (metric + 1e-9 * torch.exp(-d2)) * inside
    idx = sel.topk(min(topk, n_a), dim=2).indices
    cand = torch.zeros_like(inside).scatter_(2, idx, True) & inside
    multi = cand.sum(1) > 1
    if multi.any():
        best = (ious * cand).argmax(1)  # (B, A)
        one = F.one_hot(best, cand.shape[1]).permute(0, 2, 1).bool()
        cand = torch.where(multi[:, None, :], one & cand, cand)
    fg = cand.any(1)
    gt_idx = cand.float().argmax(1)
    am = metric * cand
    norm = (am * (ious * cand).amax(2, keepdim=True) / (am.amax(2, keepdim=True) + 1e-9)).amax(1)
    t_cls = b.cls.gather(1, gt_idx)
    t_scores = F.one_hot(t_cls, nc).float() * (norm * fg)[..., None]
    t_boxes = gt.gather(1, gt_idx[..., None].expand(-1, -1, 4))
    return fg, gt_idx, t_scores, t_boxes


def compute_loss(
    out: tuple[list[Tensor], list[Tensor], list[Tensor], Tensor],
    b: Batch,
    w_box: float = 5.0,
    w_cls: float = 1.0,
    w_mask: float = 5.0,
    w_dice: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    boxes, logits, coefs, protos = out
    pb, pl, pc, anchors, _ = flatten_outputs(boxes, logits, coefs)
    fg, gt_idx, t_scores, t_boxes = assign(pl.detach().sigmoid(), pb.detach(), anchors, b)
    ts_sum = t_scores.sum().clamp(min=1.0)
    l_cls = F.binary_cross_entropy_with_logits(pl, t_scores, reduction="sum") / ts_sum
    if fg.any():
        weight = t_scores.sum(-1)[fg]
        ciou = box_iou_pairs(pb[fg], t_boxes[fg], ciou=True)
        l_box = ((1.0 - ciou) * weight).sum() / ts_sum
        ms = protos.shape[-1]
        stride = b.images.shape[-1] / ms
        grid = (torch.arange(ms, dtype=torch.float32) + 0.5) * stride
        gx1, gy1, gx2, gy2 = (b.boxes[..., i] for i in range(4))  # (B, M)
        cx = (grid >= gx1[..., None]) & (grid <= gx2[..., None])  # (B, M, ms)
        cy = (grid >= gy1[..., None]) & (grid <= gy2[..., None])
        crops = (cy[..., :, None] & cx[..., None, :]).float()  # (B, M, ms, ms)
        l_bce, l_dice, n_pos = pb.new_zeros(()), pb.new_zeros(()), 0
        for i in range(fg.shape[0]):
            sel = fg[i].nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            g = gt_idx[i, sel]
            logit = pc[i, sel] @ protos[i].reshape(N_PROTO, -1)  # (P, ms*ms)
            tgt = b.masks[i, g].reshape(len(sel), -1)
            crop = crops[i, g].reshape(len(sel), -1)
            area = crop.sum(1).clamp(min=1.0)
            bce = F.binary_cross_entropy_with_logits(logit, tgt, reduction="none")
            l_bce = l_bce + ((bce * crop).sum(1) / area).sum()
            p = logit.sigmoid() * crop
            l_dice = l_dice + (1 - (2 * (p * tgt).sum(1) + 1) / (p.sum(1) + (tgt * crop).sum(1) + 1)).sum()
            n_pos += len(sel)
        l_bce, l_dice = l_bce / max(n_pos, 1), l_dice / max(n_pos, 1)
    else:
        l_box = l_bce = l_dice = pb.sum() * 0.0
    total = w_box * l_box + w_cls * l_cls + w_mask * l_bce + w_dice * l_dice
    stats = {k: float(v.detach()) for k, v in (("box", l_box), ("cls", l_cls), ("mask", l_bce), ("dice", l_dice))}
    return total, stats


# ---------------------------------------------------------------------------------------------- trainer


class EMA:
    """Exponential moving average of weights (with a warm-up of the decay)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, tau: float = 500.0) -> None:
        self.model = deepcopy(model).eval()
        self.decay, self.tau, self.updates = decay, tau, 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def export_onnx(net: SegNet, path: Path, size: int) -> None:
    import onnx

    wrapper = ExportWrapper(deepcopy(net).eval())
    dummy = torch.zeros(1, 3, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        wrapper,
        (dummy,),
        str(tmp),
        input_names=["images"],
        output_names=["output0", "output1"],
        opset_version=17,
        do_constant_folding=True,
        dynamo=False,
    )
    model = onnx.load(str(tmp))
    meta = {
        "names": str({i: n for i, n in enumerate(CLASS_NAMES)}),
        "imgsz": str([size, size]),
        "stride": str(max(STRIDES)),
        "task": "segment",
        "batch": "1",
        "description": "seg-agent demo model: synthetic circle/rectangle/triangle (training/train.py)",
        "author": "seg-agent",
        "license": "Apache-2.0",
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    tmp.unlink()


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, cosine over ``cosine_span`` steps, then (last ``anneal`` steps) linear to zero."""
    span = args.cosine_span or args.iters
    warm = min(300, span // 10 + 1)

    def cosine(s: int) -> float:
        return float(args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, span - warm)))))

    if step < warm:
        return float(args.lr * (step + 1) / warm)
    knee = args.iters - args.anneal
    if args.anneal > 0 and step >= knee:
        return cosine(knee) * (args.iters - step) / args.anneal
    return cosine(step)


def train(args: argparse.Namespace) -> SegNet:
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    data = build_cache(Path(args.cache), args.n_train, args.imgsz, args.workers)
    print(f"data: {len(data)} frames ready in {time.time() - t0:.0f} s", file=sys.stderr)
    net = SegNet(nc=len(CLASS_NAMES), act=args.act)
    if args.init:
        net.load_state_dict(torch.load(args.init, map_location="cpu"))
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0}],
        lr=args.lr,
        betas=(0.9, 0.999),
    )
    ema = EMA(net, decay=args.ema_decay)
    ema.updates = args.start_step
    total = args.iters
    knee = total - args.anneal
    it = batches(data, args.batch, args.seed + args.start_step)
    net.train()
    bar = tqdm(range(args.start_step, total), desc="train", unit="it", dynamic_ncols=True)
    run: dict[str, float] = {}
    for step in bar:
        lr = lr_at(step, args)
        if step == knee:
            ema.decay = args.ema_decay_anneal
        for g in opt.param_groups:
            g["lr"] = lr
        b = next(it)
        loss, stats = compute_loss(net(b.images), b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        ema.update(net)
        for k, v in stats.items():
            run[k] = 0.98 * run.get(k, v) + 0.02 * v
        bar.set_postfix({k: f"{v:.3f}" for k, v in run.items()} | {"lr": f"{lr:.1e}"}, refresh=False)
        if args.ckpt and (step + 1) % 500 == 0:
            torch.save(ema.model.state_dict(), args.ckpt)
    bar.close()
    print(f"trained {total} iterations in {time.time() - t0:.0f} s", file=sys.stderr)
    if args.ckpt:
        torch.save(ema.model.state_dict(), args.ckpt)
    assert isinstance(ema.model, SegNet)
    return ema.model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    p.add_argument("--out", default="models/demo-seg.onnx", help="ONNX file to write")
    p.add_argument("--cache", default="runs/cache", help="where rendered training frames are cached")
    p.add_argument("--ckpt", default="runs/demo-seg.pt", help="EMA weights checkpoint ('' for none)")
    p.add_argument("--n-train", type=int, default=6000, help="frames rendered for training")
    p.add_argument("--iters", type=int, default=3600, help="optimiser steps in all")
    p.add_argument("--cosine-span", type=int, default=4500, help="length of the cosine LR curve (steps)")
    p.add_argument("--anneal", type=int, default=1000, help="last steps: LR linear to zero")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--ema-decay-anneal", type=float, default=0.99, help="EMA decay while annealing")
    p.add_argument("--init", default="", help="start from these weights (a --ckpt file)")
    p.add_argument("--start-step", type=int, default=0, help="with --init: the step to go on from")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--imgsz", type=int, default=320, help="training input size")
    p.add_argument(
        "--export-imgsz",
        type=int,
        default=416,
        help="input size of the exported model (fully convolutional: more pixels for small shapes)",
    )
    p.add_argument("--act", choices=ACTIVATIONS, default="relu", help="activation of every conv block")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="render processes")
    p.add_argument("--resume-export", action="store_true", help="only export the checkpoint in --ckpt")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resume_export:
        net = SegNet(nc=len(CLASS_NAMES), act=args.act)
        net.load_state_dict(torch.load(args.ckpt, map_location="cpu"))
    else:
        net = train(args)
    export_onnx(net, Path(args.out), args.export_imgsz)
    print(f"exported {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
