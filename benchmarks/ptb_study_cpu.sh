#!/usr/bin/env bash
# The text study's cells on the CPU (issue 33), one cell at a time on one core, resumable:
# fit to the authors' stopping rule, diagnose on the test split, copy the small results
# (diagnostics JSON, per-epoch curves CSV) into benchmarks/results/ptb_text/ to commit.
#
#   benchmarks/ptb_study_cpu.sh CORE CELL [CELL ...]
#   e.g. benchmarks/ptb_study_cpu.sh 0 skip-seed0 vae-seed0      # the amortized pair, seed 0
#
# CELL is PREFIX-seedS with PREFIX one of
#   skip, vae            amortized Skip-VAE / VAE
#   bn-skip, bn-vae      BN-VAE guide (batch-normalised posterior means, γ = $GAMMA)
#   aggr-skip, aggr-vae  aggressive encoder training (He et al. 2019)
#   sa-skip, sa-vae      semi-amortized from the first step ($SA_MODE, K = $K)
# The recipe (gpu_window.py --study ptb's, on one CPU core): LSTM 256/256 encoder and decoder,
# latent 64, mean-field ELBO, SGD lr 1, clip 5, batch 32, β from 0.1 to 1 over 10 epochs,
# halve the rate every epoch once validation stalls after epoch 15, stop below 0.03, at most
# 30 epochs, early stopping after 3 epochs without a better validation bound; float32.
# Diagnosis: test split, KL / MI / aggregate KL / AU on all 3,761 sentences, IW-NLL K = 500 on
# a seeded $NLL_SIZE-sentence subset. Amortized cells are diagnosed twice, also with the same
# K-step test-time refinement as the SA cells (*.refined.json); SA cells also without it
# (*.amortized.json). A finished fit is not rerun (its checkpoint says so) and a diagnosis
# whose JSON exists is kept. Run folders: $RUNS (default ../runs/ptb-text). A smoke run:
#   RUNS=/tmp/r RESULTS=/tmp/res FIT_EXTRA="--train-size 64 --val-size 32 --num-epochs 1" \
#     DIAGNOSE_EXTRA="--eval-size 40 --num-samples 5" benchmarks/ptb_study_cpu.sh 1 skip-seed0
set -euo pipefail
cd "$(dirname "$0")/.."
core=$1; shift
RUNS=${RUNS:-../runs/ptb-text}
RESULTS=${RESULTS:-benchmarks/results/ptb_text}
K=${K:-10}; SA_MODE=${SA_MODE:-stop-gradient}; GAMMA=${GAMMA:-0.5}; NLL_SIZE=${NLL_SIZE:-640}
SKIPVAE=${SKIPVAE:-.venv/bin/skipvae}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
RECIPE=(--dataset ptb --decoder lstm --encoder lstm --elbo mean-field --optimizer sgd
  --learning-rate 1.0 --clip-norm 5 --batch-size 32 --lr-decay plateau --lr-decay-min-epochs 15
  --kl-warmup-epochs 10 --early-stopping-patience 3 --min-learning-rate 0.03 --num-epochs 30
  --latent-dim 64 --decoder-option embedding_dim=256 --decoder-option hidden_dim=256
  --encoder-option embedding_dim=256 --encoder-option hidden_dim=256 --quiet)
DIAGNOSE=(--split test --num-samples 500 --nll-size "$NLL_SIZE" --no-plots --quiet)
mkdir -p "$RUNS" "$RESULTS"

diagnose() {  # diagnose RUN NAME [options]: test-split diagnosis, JSON copied to results
  local run=$1 name=$2; shift 2
  [[ -f "$RESULTS/$name.json" ]] && return 0
  # shellcheck disable=SC2086  # DIAGNOSE_EXTRA: words on purpose
  taskset -c "$core" "$SKIPVAE" diagnose "$run" "${DIAGNOSE[@]}" ${DIAGNOSE_EXTRA:-} "$@" \
    --out "$run/$name.json"
  cp "$run/$name.json" "$RESULTS/$name.json"
}

for cell in "$@"; do
  prefix=${cell%-seed*}; seed=${cell##*-seed}
  case $prefix in
    skip) flags=(--skip) ;;
    vae) flags=(--no-skip) ;;
    bn-skip) flags=(--skip --guide bn-normal --guide-option "gamma=$GAMMA") ;;
    bn-vae) flags=(--no-skip --guide bn-normal --guide-option "gamma=$GAMMA") ;;
    aggr-skip) flags=(--skip --inference aggressive) ;;
    aggr-vae) flags=(--no-skip --inference aggressive) ;;
    sa-skip) flags=(--skip --inference semi-amortized --sa-mode "$SA_MODE" --num-refine-steps "$K") ;;
    sa-vae) flags=(--no-skip --inference semi-amortized --sa-mode "$SA_MODE" --num-refine-steps "$K") ;;
    *) echo "unknown cell $cell (see the header of $0)" >&2; exit 2 ;;
  esac
  run=$RUNS/$cell
  resume=(); [[ -f $run/checkpoint.pt ]] && resume=(--resume)
  echo "$(date -Is) fit $cell (load $(cut -d' ' -f1 /proc/loadavg))"
  # shellcheck disable=SC2086
  taskset -c "$core" "$SKIPVAE" fit "${RECIPE[@]}" ${FIT_EXTRA:-} "${flags[@]}" --seed "$seed" \
    --out "$run" "${resume[@]}"
  .venv/bin/python benchmarks/curves_table.py "$run" --names "$cell" \
    --columns val_elbo,val_kl,val_au --csv "$RESULTS/$cell.curves.csv" > /dev/null
  echo "$(date -Is) diagnose $cell (load $(cut -d' ' -f1 /proc/loadavg))"
  diagnose "$run" "$cell"
  if [[ $prefix == sa-* ]]; then
    diagnose "$run" "$cell.amortized" --num-refine-steps 0
  else
    diagnose "$run" "$cell.refined" --num-refine-steps "$K"
  fi
done
