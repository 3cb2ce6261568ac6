#!/usr/bin/env bash
# Semi-amortized before/after the coordinates change, and Trace vs TraceMeanField; commit 947f96e+ (main)
set -u
S=${SKIPVAE:-skipvae}
COMMON="--train-size 10000 --val-size 2000 --num-epochs 6 --kl-warmup-epochs 3 --quiet"
for mode in stop-gradient end-to-end; do
  for coords in log-variance log-scale; do
    out=sa-$mode-$coords
    [ -f $out/best.pt ] && continue
    OMP_NUM_THREADS=1 nice -n 10 $S fit $COMMON --inference semi-amortized --sa-mode $mode --refine-coordinates $coords --out $out > $out.log 2>&1
    OMP_NUM_THREADS=1 nice -n 10 $S diagnose $out --split val --num-samples 0 --no-plots --classifier-train-size 10000 --quiet > $out.diag.log 2>&1
  done
done
