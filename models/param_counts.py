#!/usr/bin/env python3
"""Independent parameter counts of the reference architectures, for the pinned values in
crates/autokd-models (tests) and models/README.md.

Counts trainable parameters as PyTorch's `sum(p.numel() for p in model.parameters())` does:
conv weights (+ bias where the reference has one), BN weight + bias (running statistics are
buffers), linear weight + bias. Each function walks the layer shapes of the reference code
(RepDistiller `models/*.py`, torchvision `resnet.py`, mdistiller `imagenet/mobilenetv1.py`,
DeiT `models.py`), written from those definitions without PyTorch; no reference code is imported.
Calibration against published numbers: resnet20 278,324; resnet32x4 7,433,860; wrn_40_2
2,255,156; torchvision ResNet-18 11,689,512, ResNet-34 21,797,672, ResNet-50 25,557,032; DeiT-Tiny
distilled 5,910,800; torchvision deeplabv3_resnet50 (21 classes, aux head) 42,004,074,
deeplabv3_resnet101 60,996,202.

Usage: python3 models/param_counts.py
"""


def conv(ci, co, k, groups=1, bias=False):
    return co * (ci // groups) * k * k + (co if bias else 0)


def bn(c):
    return 2 * c


def linear(i, o):
    return i * o + o


def cifar_resnet(depth, f, classes=100, cin=3):
    n = (depth - 2) // 6
    p = conv(cin, f[0], 3) + bn(f[0])
    inplanes = f[0]
    for stage, planes in enumerate(f[1:]):
        stride = 1 if stage == 0 else 2
        for i in range(n):
            s = stride if i == 0 else 1
            p += conv(inplanes, planes, 3) + bn(planes) + conv(planes, planes, 3) + bn(planes)
            if s != 1 or inplanes != planes:
                p += conv(inplanes, planes, 1) + bn(planes)
            inplanes = planes
    return p + linear(f[3], classes)


def resnet(blocks, bottleneck, stem_k, classes, cin=3):
    exp = 4 if bottleneck else 1
    p = conv(cin, 64, stem_k) + bn(64)
    inplanes = 64
    for stage, (planes, n) in enumerate(zip([64, 128, 256, 512], blocks)):
        stride = 1 if stage == 0 else 2
        for i in range(n):
            s = stride if i == 0 else 1
            if bottleneck:
                p += conv(inplanes, planes, 1) + bn(planes) + conv(planes, planes, 3) + bn(planes)
                p += conv(planes, planes * 4, 1) + bn(planes * 4)
            else:
                p += conv(inplanes, planes, 3) + bn(planes) + conv(planes, planes, 3) + bn(planes)
            if s != 1 or inplanes != planes * exp:
                p += conv(inplanes, planes * exp, 1) + bn(planes * exp)
            inplanes = planes * exp
    return p + linear(512 * exp, classes)


def wrn(depth, k, classes=100, cin=3):
    ch = [16, 16 * k, 32 * k, 64 * k]
    n = (depth - 4) // 6
    p = conv(cin, 16, 3)
    for g in range(3):
        for i in range(n):
            inp = ch[g] if i == 0 else ch[g + 1]
            out = ch[g + 1]
            p += bn(inp) + conv(inp, out, 3) + bn(out) + conv(out, out, 3)
            if inp != out:
                p += conv(inp, out, 1)
    return p + bn(ch[3]) + linear(ch[3], classes)


VGG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def vgg(name, classes=100, cin=3):
    p, inp = 0, cin
    for block in VGG[name]:
        for c in block:
            p += conv(inp, c, 3, bias=True) + bn(c)
            inp = c
    return p + linear(512, classes)


def mobilenetv2_cifar(t=6, w=0.5, classes=100, cin=3):
    setting = [(1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1), (t, 160, 3, 2), (t, 320, 1, 1)]
    inp = int(32 * w)
    p = conv(cin, inp, 3) + bn(inp)
    for e, c, n, s in setting:
        oup = int(c * w)
        for _ in range(n):
            h = inp * e
            p += conv(inp, h, 1) + bn(h) + conv(h, h, 3, groups=h) + bn(h) + conv(h, oup, 1) + bn(oup)
            inp = oup
    last = int(1280 * w) if w > 1.0 else 1280
    return p + conv(inp, last, 1) + bn(last) + linear(last, classes)


def shufflev1(classes=100, cin=3, out_planes=(240, 480, 960), blocks=(4, 8, 4), groups=3):
    p = conv(cin, 24, 1) + bn(24)
    inp = 24
    for out, n in zip(out_planes, blocks):
        for i in range(n):
            o = out - inp if i == 0 else out
            mid = o // 4
            g = 1 if inp == 24 else groups
            p += conv(inp, mid, 1, groups=g) + bn(mid) + conv(mid, mid, 3, groups=mid) + bn(mid)
            p += conv(mid, o, 1, groups=groups) + bn(o)
            inp = out
    return p + linear(out_planes[-1], classes)


def shufflev2(classes=100, cin=3, outs=(116, 232, 464, 1024), blocks=(3, 7, 3)):
    p = conv(cin, 24, 1) + bn(24)
    inp = 24
    for out, n in zip(outs[:3], blocks):
        mid = out // 2
        p += conv(inp, inp, 3, groups=inp) + bn(inp) + conv(inp, mid, 1) + bn(mid)
        p += conv(inp, mid, 1) + bn(mid) + conv(mid, mid, 3, groups=mid) + bn(mid) + conv(mid, mid, 1) + bn(mid)
        for _ in range(n):
            c = out // 2
            p += conv(c, c, 1) + bn(c) + conv(c, c, 3, groups=c) + bn(c) + conv(c, c, 1) + bn(c)
        inp = out
    return p + conv(inp, outs[3], 1) + bn(outs[3]) + linear(outs[3], classes)


def mobilenet_v1(classes=1000, cin=3):
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    p = conv(cin, 32, 3) + bn(32)
    inp = 32
    for out, _ in blocks:
        p += conv(inp, inp, 3, groups=inp) + bn(inp) + conv(inp, out, 1) + bn(out)
        inp = out
    return p + linear(1024, classes)


def deit(img=224, patch=16, dim=192, depth=12, mlp=4, classes=1000, distilled=True, cin=3):
    tokens = (img // patch) ** 2 + (2 if distilled else 1)
    p = conv(cin, dim, patch, bias=True) + dim * (2 if distilled else 1) + tokens * dim
    block = 2 * dim + linear(dim, 3 * dim) + linear(dim, dim) + 2 * dim + linear(dim, mlp * dim) + linear(mlp * dim, dim)
    p += depth * block + 2 * dim + linear(dim, classes) * (2 if distilled else 1)
    return p


def deeplabv3(blocks, bottleneck, classes=21, aux=True, cin=3, c=256, rates=3):
    """torchvision's DeepLabV3: the ResNet without its fc, then `deeplab_heads` on stage 4 (ASPP:
    1×1, `rates` 3×3 branches, image pooling, 1×1 projection; conv + BN each; DeepLabHead's 3×3
    conv + BN and 1×1 classifier with bias) and FCNHead on stage 3 (3×3 to a quarter + BN, 1×1
    with bias)."""
    exp = 4 if bottleneck else 1
    c4, c3 = 512 * exp, 256 * exp
    p = resnet(blocks, bottleneck, 7, 1000, cin) - linear(c4, 1000)
    return p + deeplab_heads(c4, c3, classes, aux, c, rates)


def mobilenet_v2(classes=1000, cin=3, last=True):
    """torchvision's MobileNetV2 (width 1.0): 3×3 stem to 32, inverted residuals (1×1 expansion
    when t > 1, 3×3 depthwise, 1×1 projection; conv + BN each), the 1×1 conv to 1,280 and the
    classifier (dropout + linear). `last=False`: the features without that 1×1 conv and the
    classifier (what DeepLabV3 reads)."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    p = conv(cin, 32, 3) + bn(32)
    inp = 32
    for t, c, n, _ in settings:
        for _ in range(n):
            h = inp * t
            if t != 1:
                p += conv(inp, h, 1) + bn(h)
            p += conv(h, h, 3, groups=h) + bn(h) + conv(h, c, 1) + bn(c)
            inp = c
    if last:
        p += conv(320, 1280, 1) + bn(1280) + linear(1280, classes)
    return p


def deeplab_heads(c4, c3, classes=21, aux=True, c=256, rates=3):
    """torchvision's DeepLabHead on `c4` channels and FCNHead on `c3`."""
    p = conv(c4, c, 1) + bn(c) + rates * (conv(c4, c, 3) + bn(c)) + conv(c4, c, 1) + bn(c)
    p += conv((rates + 2) * c, c, 1) + bn(c)
    p += conv(c, c, 3) + bn(c) + conv(c, classes, 1, bias=True)
    if aux:
        p += conv(c3, c3 // 4, 3) + bn(c3 // 4) + conv(c3 // 4, classes, 1, bias=True)
    return p


COUNTS = {
    "resnet8": cifar_resnet(8, [16, 16, 32, 64]),
    "resnet14": cifar_resnet(14, [16, 16, 32, 64]),
    "resnet20": cifar_resnet(20, [16, 16, 32, 64]),
    "resnet32": cifar_resnet(32, [16, 16, 32, 64]),
    "resnet44": cifar_resnet(44, [16, 16, 32, 64]),
    "resnet56": cifar_resnet(56, [16, 16, 32, 64]),
    "resnet110": cifar_resnet(110, [16, 16, 32, 64]),
    "resnet8x4": cifar_resnet(8, [32, 64, 128, 256]),
    "resnet32x4": cifar_resnet(32, [32, 64, 128, 256]),
    "wrn_16_1": wrn(16, 1),
    "wrn_16_2": wrn(16, 2),
    "wrn_40_1": wrn(40, 1),
    "wrn_40_2": wrn(40, 2),
    **{name: vgg(name) for name in VGG},
    "mobilenetv2": mobilenetv2_cifar(),
    "shufflenetv1": shufflev1(),
    "shufflenetv2": shufflev2(),
    "resnet50_cifar": resnet([3, 4, 6, 3], True, 3, 100),
    "resnet18": resnet([2, 2, 2, 2], False, 7, 1000),
    "resnet34": resnet([3, 4, 6, 3], False, 7, 1000),
    "resnet50": resnet([3, 4, 6, 3], True, 7, 1000),
    "mobilenet_v1": mobilenet_v1(),
    "deit_tiny": deit(),
    "deit_tiny_p4": deit(img=32, patch=4, classes=100),
    "deeplabv3_resnet18": deeplabv3([2, 2, 2, 2], False),
    "deeplabv3_resnet50": deeplabv3([3, 4, 6, 3], True),
    "deeplabv3_resnet101": deeplabv3([3, 4, 23, 3], True),
    "mobilenet_v2": mobilenet_v2(),
    # torchvision's heads on MobileNetV2's features (320 channels; aux on the 96-channel stage).
    "deeplabv3_mobilenetv2": mobilenet_v2(last=False) + deeplab_heads(320, 96),
}

CALIBRATION = {
    "resnet20": 278_324, "resnet32x4": 7_433_860, "wrn_40_2": 2_255_156,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "deit_tiny": 5_910_800,
    "deeplabv3_resnet50": 42_004_074, "deeplabv3_resnet101": 60_996_202, "mobilenet_v2": 3_504_872,
}

if __name__ == "__main__":
    for name, n in COUNTS.items():
        mark = ""
        if name in CALIBRATION:
            mark = "  ok (published)" if CALIBRATION[name] == n else f"  MISMATCH: published {CALIBRATION[name]}"
        print(f"{name:16} {n:>12,}{mark}")
