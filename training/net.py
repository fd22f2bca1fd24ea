"""A small anchor-free instance-segmentation network in the YOLOv8-seg style (our own code).

Backbone of plain 3x3 convolutions with ReLU (fast on CPUs, also ARM ones, and in int8: ReLU folds into
the quantized convolution, where SiLU costs two uint8 passes per layer), an FPN + PAN neck, a light head on
strides 8, 16 and 32 that predicts per grid cell a box (distances to the four sides), class logits and 32
mask coefficients, and a prototype branch at stride 4 that also sees the stride-4 backbone features.

:class:`SegNet` returns raw training outputs; :class:`ExportWrapper` turns them into the Ultralytics
YOLOv8-seg ONNX layout: ``output0`` [1, 4+nc+32, N] (cx, cy, w, h in input pixels, sigmoid scores,
coefficients) and ``output1`` [1, 32, H/4, W/4].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

STRIDES = (8, 16, 32)
N_PROTO = 32


ACTIVATIONS = ("relu", "silu")
"""``relu`` (the demo model's) folds into the convolution in int8 (ONNX Runtime drops it into QLinearConv's
output range) and in fp32 (a fused Conv+Relu); ``silu``, as YOLOv8, costs a QLinearSigmoid and a QLinearMul
per layer in int8 (20 % of the int8 demo model's run) and a QuickGelu in fp32."""


def _activation(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


class Conv(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1, act: str = "relu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, momentum=0.03, eps=1e-3)
        self.act = _activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Res(nn.Module):
    """Residual pair of 3x3 convolutions."""

    def __init__(self, c: int, act: str = "relu") -> None:
        super().__init__()
        self.a = Conv(c, c, act=act)
        self.b = Conv(c, c, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.b(self.a(x))


class Stage(nn.Module):
    """Downsample by 2, then residual blocks."""

    def __init__(self, c_in: int, c_out: int, n: int, act: str = "relu") -> None:
        super().__init__()
        self.down = Conv(c_in, c_out, 3, 2, act=act)
        self.blocks = nn.Sequential(*[Res(c_out, act) for _ in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.down(x))


class SegNet(nn.Module):
    def __init__(
        self,
        nc: int = 3,
        width: tuple[int, int, int, int, int] = (16, 32, 64, 96, 128),
        neck: int = 48,
        depth: tuple[int, int, int, int] = (0, 1, 1, 1),
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.nc = nc
        self.act = act
        w0, w1, w2, w3, w4 = width
        self.stem = Conv(3, w0, 3, 2, act=act)  # /2
        self.s2 = Stage(w0, w1, depth[0], act=act)  # /4
        self.s3 = Stage(w1, w2, depth[1], act=act)  # /8
        self.s4 = Stage(w2, w3, depth[2], act=act)  # /16
        self.s5 = Stage(w3, w4, depth[3], act=act)  # /32
        # FPN (top-down)
        self.lat5 = Conv(w4, neck, 1, act=act)
        self.td4 = Conv(w3 + neck, neck, act=act)
        self.td3 = Conv(w2 + neck, neck, act=act)
        # PAN (bottom-up)
        self.down3 = Conv(neck, neck, 3, 2, act=act)
        self.bu4 = Conv(2 * neck, neck, act=act)
        self.down4 = Conv(neck, neck, 3, 2, act=act)
        self.bu5 = Conv(2 * neck, neck, act=act)
        # Head: per level, a two-conv trunk then 1x1 outputs.
        self.no = 4 + nc + N_PROTO
        self.trunks = nn.ModuleList(
            nn.Sequential(Conv(neck, neck, act=act), Conv(neck, neck, act=act)) for _ in STRIDES
        )
        self.box = nn.ModuleList(nn.Conv2d(neck, 4, 1) for _ in STRIDES)
        self.cls = nn.ModuleList(nn.Conv2d(neck, nc, 1) for _ in STRIDES)
        self.coef = nn.ModuleList(nn.Conv2d(neck, N_PROTO, 1) for _ in STRIDES)
        # Prototypes at stride 4.
        self.p_in = Conv(neck, N_PROTO, 1, act=act)
        self.p_skip = Conv(w1, N_PROTO, 1, act=act)
        self.p_mid = Conv(N_PROTO, N_PROTO, act=act)
        self.p_out = nn.Conv2d(N_PROTO, N_PROTO, 1)
        self._init_bias()

    def _init_bias(self) -> None:
        for box, cls in zip(self.box, self.cls, strict=True):
            nn.init.constant_(box.bias, math.log(math.e**1.5 - 1))  # softplus -> 1.5 strides a side
            nn.init.constant_(cls.bias, -math.log((1 - 0.01) / 0.01))
            nn.init.normal_(box.weight, std=0.01)
            nn.init.normal_(cls.weight, std=0.01)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
        """Per level: box distances (B,4,h,w) in strides, class logits, coefficients; prototypes."""
        p2 = self.s2(self.stem(x))
        p3 = self.s3(p2)
        p4 = self.s4(p3)
        p5 = self.s5(p4)
        l5 = self.lat5(p5)
        t4 = self.td4(torch.cat([F.interpolate(l5, scale_factor=2.0, mode="nearest"), p4], 1))
        t3 = self.td3(torch.cat([F.interpolate(t4, scale_factor=2.0, mode="nearest"), p3], 1))
        o4 = self.bu4(torch.cat([self.down3(t3), t4], 1))
        o5 = self.bu5(torch.cat([self.down4(o4), l5], 1))
        boxes, logits, coefs = [], [], []
        for i, f in enumerate((t3, o4, o5)):
            h = self.trunks[i](f)
            boxes.append(F.softplus(self.box[i](h)))
            logits.append(self.cls[i](h))
            coefs.append(self.coef[i](h))
        pr = F.interpolate(self.p_in(t3), scale_factor=2.0, mode="nearest") + self.p_skip(p2)
        protos = self.p_out(self.p_mid(pr))
        return boxes, logits, coefs, protos


def make_anchors(shapes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Cell centres (A, 2) in input pixels and their strides (A, 1)."""
    pts, strides = [], []
    for (h, w), s in zip(shapes, STRIDES, strict=True):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pts.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1))
        strides.append(torch.full((h * w, 1), float(s), device=device))
    return torch.cat(pts), torch.cat(strides)


def flatten_outputs(
    boxes: list[Tensor], logits: list[Tensor], coefs: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(B, A, 4) xyxy boxes in input pixels, (B, A, nc) logits, (B, A, 32) coefficients, anchors, strides."""
    shapes = [(int(b.shape[2]), int(b.shape[3])) for b in boxes]
    anchors, strides = make_anchors(shapes, boxes[0].device)
    dist = torch.cat([b.flatten(2) for b in boxes], 2).transpose(1, 2) * strides  # (B, A, 4) ltrb px
    xyxy = torch.cat([anchors - dist[..., :2], anchors + dist[..., 2:]], -1)
    lg = torch.cat([t.flatten(2) for t in logits], 2).transpose(1, 2)
    cf = torch.cat([t.flatten(2) for t in coefs], 2).transpose(1, 2)
    return xyxy, lg, cf, anchors, strides


class ExportWrapper(nn.Module):
    """The YOLOv8-seg ONNX layout."""

    def __init__(self, net: SegNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        boxes, logits, coefs, protos = self.net(x)
        xyxy, lg, cf, _, _ = flatten_outputs(boxes, logits, coefs)
        cxcy = (xyxy[..., :2] + xyxy[..., 2:]) / 2
        wh = xyxy[..., 2:] - xyxy[..., :2]
        out = torch.cat([cxcy, wh, lg.sigmoid(), cf], -1).transpose(1, 2)
        return out, protos
