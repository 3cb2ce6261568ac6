#!/usr/bin/env bash
# VAE vs Skip-VAE on the Penn Treebank at the CPU default sizes (embedding/hidden 256, latent
# 32) with the papers' text recipe (SGD lr 1, global-norm clip 5, batch 32, KL warm-up from
# 0.1, plateau halving), shortened for a 2-core CPU box: 3 epochs with a 1-epoch warm-up, then
# resumed to 6 (`resume NAME --num-epochs 6 [--no-skip]`). Results: benchmarks/results/ptb_lstm.md.
#   bash benchmarks/ptb_runs.sh run ptb-skip-vae --skip
#   bash benchmarks/ptb_runs.sh run ptb-vae --no-skip
#   bash benchmarks/ptb_runs.sh resume ptb-vae --no-skip --num-epochs 6
#   bash benchmarks/ptb_runs.sh diagnose ptb-vae
set -eu
SKIPVAE=${SKIPVAE:-skipvae}
OUT=${OUT:-runs/text}
COMMON="--dataset ptb --latent-dim 32 --elbo mean-field --optimizer sgd --learning-rate 1 --clip-norm 5 --batch-size 32 --lr-decay plateau --lr-decay-min-epochs 2 --num-epochs 3 --kl-warmup-epochs 1 --seed 0"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
case "$1" in
  run) $SKIPVAE -v fit $COMMON "${@:3}" --out "$OUT/$2" >"$OUT/$2.log" 2>&1 ;;
  resume) $SKIPVAE -v fit $COMMON "${@:3}" --resume --out "$OUT/$2" >>"$OUT/$2.log" 2>&1 ;;
  # test split, K = 100 importance samples (CPU budget)
  diagnose) $SKIPVAE diagnose "$OUT/$2" --split test --num-samples 100 >"$OUT/$2.diag.log" 2>&1 ;;
  *) echo "usage: $0 run|resume|diagnose NAME [fit options]" >&2; exit 2 ;;
esac
