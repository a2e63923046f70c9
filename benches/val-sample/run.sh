#!/bin/sh
# Usage: benches/val-sample/run.sh [autokd binary] — writes runs/val-sample/{all,20,50,200}.
# "all" sets no per-class sample: the held-out part up to proxy.val_max (10,000 images).
# A killed run resumes: run it again.
set -e
bin=${1:-target/release/autokd}
here=$(dirname "$0")
mkdir -p runs/val-sample
for n in 0 20 50 200; do
    name=$n; [ "$n" = 0 ] && name=all
    sed "s/^val_per_class = 0$/val_per_class = $n/" "$here/fashion.toml" > "runs/val-sample/$name.toml"
    "$bin" search --config "runs/val-sample/$name.toml" --out "runs/val-sample/$name"
done
