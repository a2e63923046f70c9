#!/usr/bin/env python3
"""PyTorch reference for `autokd bench train --pytorch`: the same CIFAR models, batch, threads and
steps as autokd's benchmark, written the way mdistiller / RepDistiller training loops run them.
With `--seg MODELS` the reference of `autokd bench segmentation`: torchvision's DeepLabV3
(`deeplabv3_resnet50/101`; on ResNet-18, torchvision's heads on a ResNet-18 whose stages 3 and 4
trade stride for dilation, as mmseg's and CIRKD's are, since torchvision's BasicBlock refuses
dilation), one SGD step of pixel CE + 0.4 × the auxiliary head's, and inference. With `--det
MODELS` the reference of `autokd bench detection`: torchvision's `RetinaNet` on a ResNet-18/50/101
FPN as `retinanet_resnet50_fpn` builds it with a pretrained backbone (FrozenBatchNorm2d, stem and
layer1 frozen, P6/P7 on P5), its transform set not to resize (min and max size = the input's),
one SGD step of its focal and L1 losses on random boxes, and inference with its post-processing.

Needs PyTorch (`pip install torch`), only for benchmarking; the tests never need it. Prints one
JSON object on stdout:
  {"torch": version, "threads": n, "params": {model: count}, "results": [{"name", "ms"}]}

The models follow RepDistiller's definitions (resnet*, resnet*x4, wrn_*, mobile_half,
ShuffleV2), written here from their architecture descriptions; the parameter counts are printed so
that autokd can check they equal its own.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- models


def conv_bn(cin, cout, k, stride=1, groups=1, relu=True):
    layers = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1, relu=False)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = conv_bn(cin, cout, 1, stride, relu=False)

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        return F.relu(out + (x if self.down is None else self.down(x)))


class CifarResNet(nn.Module):
    """resnet{8..110}: widths 16/16/32/64; resnet{8,32}x4: 32/64/128/256."""

    def __init__(self, depth, widths, classes):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = conv_bn(3, widths[0], 3)
        layers, cin = [], widths[0]
        for i, w in enumerate(widths[1:]):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class WideBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return y + (x if self.short is None else self.short(o))


class WideResNet(nn.Module):
    def __init__(self, depth, k, classes):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        blocks, cin = [], 16
        for i, w in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(WideBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        h = cin * t
        self.body = nn.Sequential(
            conv_bn(cin, h, 1), conv_bn(h, h, 3, stride, groups=h), conv_bn(h, cout, 1, relu=False)
        )
        self.res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.res else self.body(x)


class MobileHalf(nn.Module):
    """RepDistiller's mobile_half: MobileNetV2, expansion 6, width 0.5, CIFAR strides."""

    def __init__(self, classes, t=6, w=0.5):
        super().__init__()
        setting = [(1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2),
                   (t, 96, 3, 1), (t, 160, 3, 2), (t, 320, 1, 1)]
        cin = int(32 * w)
        layers = [conv_bn(3, cin, 3, 2)]
        for e, c, n, s in setting:
            cout = int(c * w)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, e))
                cin = cout
        layers.append(conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def shuffle(x, g=2):
    b, c, h, w = x.shape
    return x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleDown(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, relu=False), conv_bn(cin, mid, 1))
        self.right = nn.Sequential(
            conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, 2, groups=mid, relu=False), conv_bn(mid, mid, 1)
        )

    def forward(self, x):
        return shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleBasic(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.body = nn.Sequential(conv_bn(h, h, 1), conv_bn(h, h, 3, groups=h, relu=False), conv_bn(h, h, 1))

    def forward(self, x):
        h = x.shape[1] // 2
        return shuffle(torch.cat([x[:, :h], self.body(x[:, h:])], 1))


class ShuffleV2(nn.Module):
    def __init__(self, classes, outs=(116, 232, 464), blocks=(3, 7, 3)):
        super().__init__()
        layers, cin = [conv_bn(3, 24, 1)], 24
        for c, n in zip(outs, blocks):
            layers.append(ShuffleDown(cin, c))
            layers.extend(ShuffleBasic(c) for _ in range(n))
            cin = c
        layers.append(conv_bn(cin, 1024, 1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def build(name, classes=100):
    thin, wide = [16, 16, 32, 64], [32, 64, 128, 256]
    if name.startswith("resnet") and name.endswith("x4"):
        return CifarResNet(int(name[6:-2]), wide, classes)
    if name.startswith("resnet"):
        return CifarResNet(int(name[6:]), thin, classes)
    if name.startswith("wrn_"):
        _, depth, k = name.split("_")
        return WideResNet(int(depth), int(k), classes)
    if name == "mobilenetv2":
        return MobileHalf(classes)
    if name == "shufflenetv2":
        return ShuffleV2(classes)
    raise SystemExit(f"unknown model {name}")


# ----------------------------------------------------------------------------- measurements


def kd_loss(s, t, T=4.0):
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T


def timed(fn, steps, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", default="resnet20,resnet8x4,wrn_16_2,mobilenetv2,shufflenetv2")
    p.add_argument("--pairs", default="resnet56:resnet20,resnet32x4:resnet8x4")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--proxy-train", type=int, default=1000, help="images of the proxy trial")
    p.add_argument("--proxy-val", type=int, default=200, help="validation images of the proxy trial")
    p.add_argument("--proxy-epochs", type=int, default=1)
    p.add_argument("--ops", action="store_true", help="time single operations instead (bench ops)")
    p.add_argument("--seg", help="segmentation models to time instead (bench segmentation)")
    p.add_argument("--size", default="512x512", help="segmentation input HxW")
    p.add_argument("--classes", type=int, default=19, help="segmentation or detection classes")
    p.add_argument("--det", help="detectors to time instead (bench detection)")
    p.add_argument("--boxes", type=int, default=8, help="ground-truth boxes per image (detection)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.ops:
        return ops(a)
    if a.seg:
        return seg(a)
    if a.det:
        return det(a)
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, 32, 32)
    y = torch.arange(a.batch) % 100
    results, params = [], {}

    def record(name, ms):
        results.append({"name": name, "ms": ms})
        print(f"{name:<40} {ms:10.1f} ms", file=sys.stderr)

    def sgd(m):
        return torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    for name in a.students.split(","):
        m = build(name).train()
        params[name] = sum(p.numel() for p in m.parameters())
        opt = sgd(m)

        def ce_step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()

        record(f"ce step {name}", timed(ce_step, a.steps))

    for pair in a.pairs.split(","):
        tname, sname = pair.split(":")
        t = build(tname).eval()
        params[tname] = sum(p.numel() for p in t.parameters())
        s = build(sname).train()
        opt = sgd(s)

        def infer():
            with torch.no_grad():
                return t(x)

        record(f"teacher inference {tname}", timed(infer, a.steps))
        cached = infer()

        def kd_step(online):
            opt.zero_grad(set_to_none=True)
            tl = infer() if online else cached
            out = s(x)
            (F.cross_entropy(out, y) + kd_loss(out, tl)).backward()
            opt.step()

        record(f"kd step online {tname}->{sname}", timed(lambda: kd_step(True), a.steps))
        record(f"kd step cached {tname}->{sname}", timed(lambda: kd_step(False), a.steps))

    # One proxy trial, the PyTorch way: a fresh student trained on the proxy images with the online
    # teacher, then evaluated on the validation images.
    tname, sname = a.pairs.split(",")[0].split(":")
    t = build(tname).eval()
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(a.proxy_train, 3, 32, 32, generator=g)
    ys = torch.arange(a.proxy_train) % 100
    xv = torch.randn(a.proxy_val, 3, 32, 32, generator=g)

    def trial():
        s = build(sname).train()
        opt = sgd(s)
        for _ in range(a.proxy_epochs):
            perm = torch.randperm(a.proxy_train)
            for i in range(0, a.proxy_train, a.batch):
                idx = perm[i : i + a.batch]
                with torch.no_grad():
                    tl = t(xs[idx])
                out = s(xs[idx])
                opt.zero_grad(set_to_none=True)
                (F.cross_entropy(out, ys[idx]) + kd_loss(out, tl)).backward()
                opt.step()
        s.eval()
        with torch.no_grad():
            for i in range(0, a.proxy_val, 256):
                s(xv[i : i + 256])

    record(f"proxy trial online {tname}->{sname}", timed(trial, 3, warmup=1))
    json.dump({"torch": torch.__version__, "threads": a.threads, "params": params, "results": results}, sys.stdout)
    print()


# ----------------------------------------------------------------------------- segmentation


class DilatedBasicBlock(nn.Module):
    """torchvision's BasicBlock with a dilation (padding = dilation) on both 3×3 convolutions."""

    expansion = 1

    def __init__(self, cin, cout, stride, dilation):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def dilated_resnet18():
    """torchvision's resnet18 layout (conv1, bn1, layer1..4) at output stride 8."""
    from torchvision.models import resnet18

    m = resnet18(weights=None)
    cin, dilation = 64, 1
    for i, planes in enumerate([64, 128, 256, 512]):
        if i < 2:
            stride, previous = (1 if i == 0 else 2), dilation
        else:
            previous, dilation, stride = dilation, dilation * 2, 1
        blocks = []
        for j in range(2):
            # The first block of a dilated stage keeps the previous dilation (torchvision's rule).
            d = previous if j == 0 else dilation
            blocks.append(DilatedBasicBlock(cin, planes, stride if j == 0 else 1, d))
            cin = planes
        setattr(m, f"layer{i + 1}", nn.Sequential(*blocks))
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    return m


def build_seg(name, classes):
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from torchvision.models.segmentation.fcn import FCNHead

    if name == "deeplabv3_resnet50":
        return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=classes, aux_loss=True)
    if name == "deeplabv3_resnet101":
        return deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=classes, aux_loss=True)
    if name == "deeplabv3_resnet18":
        backbone = IntermediateLayerGetter(dilated_resnet18(), {"layer4": "out", "layer3": "aux"})
        return DeepLabV3(backbone, DeepLabHead(512, classes), FCNHead(256, classes))
    raise SystemExit(f"--seg: unknown model {name}")


def seg(a):
    h, w = (int(v) for v in a.size.split("x"))
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, h, w)
    y = torch.randint(0, a.classes, (a.batch, h, w))
    results, params = [], {}

    def record(name, ms):
        results.append({"name": name, "ms": ms})
        print(f"{name:<40} {ms:10.1f} ms", file=sys.stderr)

    for name in a.seg.split(","):
        m = build_seg(name, a.classes).train()
        params[name] = sum(p.numel() for p in m.parameters())
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            out = m(x)
            loss = F.cross_entropy(out["out"], y, ignore_index=255)
            loss = loss + 0.4 * F.cross_entropy(out["aux"], y, ignore_index=255)
            loss.backward()
            opt.step()

        record(f"seg ce step {name}", timed(step, a.steps))
        m.eval()  # both sides run the auxiliary head at inference too

        def infer():
            with torch.no_grad():
                return m(x)["out"]

        record(f"seg inference {name}", timed(infer, a.steps))
    json.dump({"torch": torch.__version__, "threads": a.threads, "params": params, "results": results}, sys.stdout)
    print()


# ----------------------------------------------------------------------------- detection


def build_det(name, classes, h, w):
    from torchvision.models import resnet18, resnet50, resnet101
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import misc as misc_nn_ops
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    depth = {"retinanet_resnet18_fpn": resnet18, "retinanet_resnet50_fpn": resnet50,
             "retinanet_resnet101_fpn": resnet101}
    if name not in depth:
        raise SystemExit(f"--det: unknown model {name}")
    body = depth[name](weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, classes, min_size=min(h, w), max_size=max(h, w))


def random_boxes(images, per_image, classes, h, w, gen):
    """Sides 32 to a third of the image, inside it, random classes (autokd draws its own)."""
    out = []
    for _ in range(images):
        bw = torch.randint(32, max(w // 3, 33) + 1, (per_image,), generator=gen).float()
        bh = torch.randint(32, max(h // 3, 33) + 1, (per_image,), generator=gen).float()
        x = torch.rand(per_image, generator=gen) * (w - bw).clamp(min=1)
        y = torch.rand(per_image, generator=gen) * (h - bh).clamp(min=1)
        out.append({"boxes": torch.stack([x, y, x + bw, y + bh], 1),
                    "labels": torch.randint(0, classes, (per_image,), generator=gen)})
    return out


def det(a):
    h, w = (int(v) for v in a.size.split("x"))
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = [torch.randn(3, h, w) for _ in range(a.batch)]
    targets = random_boxes(a.batch, a.boxes, a.classes, h, w, gen)
    results, params = [], {}

    def record(name, ms):
        results.append({"name": name, "ms": ms})
        print(f"{name:<40} {ms:10.1f} ms", file=sys.stderr)

    for name in a.det.split(","):
        m = build_det(name, a.classes, h, w).train()
        params[name] = sum(p.numel() for p in m.parameters())
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01,
                              momentum=0.9, weight_decay=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            losses = m(x, targets)
            sum(losses.values()).backward()
            opt.step()

        record(f"det focal step {name}", timed(step, a.steps))
        m.eval()

        def infer():
            with torch.no_grad():
                return m(x)

        record(f"det inference {name}", timed(infer, a.steps))
    json.dump({"torch": torch.__version__, "threads": a.threads, "params": params, "results": results}, sys.stdout)
    print()


OPS = [
    ("conv3x3 16->16 @32", (16, 32, 32), lambda c: nn.Conv2d(c, c, 3, 1, 1, bias=False)),
    ("conv3x3 32->32 @16", (32, 16, 16), lambda c: nn.Conv2d(c, c, 3, 1, 1, bias=False)),
    ("conv3x3 64->64 @8", (64, 8, 8), lambda c: nn.Conv2d(c, c, 3, 1, 1, bias=False)),
    ("conv1x1 16->32 s2 @32", (16, 32, 32), lambda c: nn.Conv2d(c, 2 * c, 1, 2, 0, bias=False)),
    ("batchnorm train 16 @32", (16, 32, 32), lambda c: nn.BatchNorm2d(c)),
    ("relu 16 @32", (16, 32, 32), lambda c: nn.ReLU()),
    ("add 16 @32", (16, 32, 32), lambda c: (lambda x: x + x)),
    ("global avg pool 64 @8", (64, 8, 8), lambda c: (lambda x: x.mean((2, 3)))),
    ("linear 64->100", (64, 1, 1), lambda c: (lambda x, l=nn.Linear(c, 100): l(x.flatten(1)))),
]


def ops(a):
    results = []
    for name, shape, make in OPS:
        op = make(shape[0])
        x = torch.randn(a.batch, *shape)
        with torch.no_grad():
            fwd = timed(lambda: op(x), a.steps)
        xg = x.clone().requires_grad_()
        both = timed(lambda: op(xg).sum().backward(), a.steps)
        results.append({"name": name, "fwd": fwd, "fwd_bwd": both})
        print(f"{name:<26} {fwd:10.3f} {both:10.3f} ms", file=sys.stderr)
    json.dump({"torch": torch.__version__, "threads": a.threads, "results": results}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
