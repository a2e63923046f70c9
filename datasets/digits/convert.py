#!/usr/bin/env python3
"""Convert scikit-learn's digits.csv.gz to the IDX files that autokd embeds.

The source is `sklearn/datasets/data/digits.csv.gz` as shipped in scikit-learn 1.9.1 (in the
wheel, or in Debian's python3-sklearn): 1,797 rows of 64 pixel values (0..16, row-major 8x8)
followed by the class label (0..9). It is the test split of the UCI "Optical Recognition of
Handwritten Digits" data set (E. Alpaydin, C. Kaynak; CC BY 4.0).

Usage:
    pip download --no-deps scikit-learn==1.9.1 -d /tmp/skl
    unzip -p /tmp/skl/scikit_learn-1.9.1-*.whl sklearn/datasets/data/digits.csv.gz > /tmp/digits.csv.gz
    python3 datasets/digits/convert.py /tmp/digits.csv.gz datasets/digits

Writes `digits-images-idx3-ubyte` (magic 0x00000803, dims 1797x8x8, values 0..16 as bytes) and
`digits-labels-idx1-ubyte` (magic 0x00000801, dim 1797), in source row order. Standard library only.
"""
import gzip
import hashlib
import os
import struct
import sys

EXPECTED_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"


def main(src: str, out_dir: str) -> None:
    raw = open(src, "rb").read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != EXPECTED_SHA256:
        sys.exit(f"{src}: sha256 {digest}, expected {EXPECTED_SHA256} (scikit-learn 1.9.1)")
    rows = [line.split(",") for line in gzip.decompress(raw).decode("ascii").splitlines() if line]
    if len(rows) != 1797 or any(len(r) != 65 for r in rows):
        sys.exit(f"{src}: expected 1797 rows of 65 values")
    pixels = bytearray()
    labels = bytearray()
    for r in rows:
        values = [int(float(v)) for v in r]
        if not all(0 <= v <= 16 for v in values[:64]) or not 0 <= values[64] <= 9:
            sys.exit(f"{src}: value out of range in row {r}")
        pixels.extend(values[:64])
        labels.append(values[64])
    write(os.path.join(out_dir, "digits-images-idx3-ubyte"), struct.pack(">IIII", 0x803, 1797, 8, 8) + pixels)
    write(os.path.join(out_dir, "digits-labels-idx1-ubyte"), struct.pack(">II", 0x801, 1797) + labels)


def write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    print(f"{path}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
