#!/usr/bin/env bash
# The image study's controls and added seeds (issue 36) on the CPU, one cell at a time on one
# core, resumable: a step that is done is skipped, so the same command continues after a stop.
#
#   benchmarks/image_study_cpu.sh CORE STEP [STEP ...]
#   e.g. benchmarks/image_study_cpu.sh 0 amortized:2 control:2 sa:2
#
# STEP is KIND:N, N a cell's index in `skipvae sweep GRID --list` (0-5: seeds 0, 1, 2, each
# skip then no skip; the same in both grids):
#   amortized:N  cell N of grids/pixelcnn_bmnist_cpu.yaml, fitted and diagnosed by the sweep
#                into $RUNS/pixelcnn_cpu (the committed cells trained again: their checkpoints
#                are gone; the diagnosis JSON is copied over the committed one, so `git diff`
#                shows whether the retraining reproduced it)
#   control:N    amortized cell N diagnosed again with the semi-amortized cells' test-time
#                refinement (K = $K with the default step: lr 1, momentum 0.5, clip 5, batches
#                of 50, as grids/pixelcnn_bmnist_cpu_sa.yaml), the control RQ5 compares to
#   sa:N         cell N of grids/pixelcnn_bmnist_cpu_sa.yaml (fine-tuned from amortized cell N)
#   continue:N   amortized cell N copied to $RUNS/pixelcnn_cpu_continued and trained past its
#                40-epoch cap until early stopping ends it (at most $MAX_EPOCHS), diagnosed alike
# Results: benchmarks/results/pixelcnn_bmnist_cpu{,_control,_sa,_continued}/NAME.json and
# NAME.curves.csv (per epoch). The SA grid's init_from names ../runs/pixelcnn_cpu, so keep RUNS
# for real runs. A smoke run: tiny copies of the grids (--train-size etc. in their fit:) as
#   RUNS=/tmp/r RESULTS=/tmp/res AMORTIZED_GRID=/tmp/a.yaml SA_GRID=/tmp/s.yaml \
#     benchmarks/image_study_cpu.sh 1 amortized:0 control:0 continue:0 sa:0
set -euo pipefail
cd "$(dirname "$0")/.."
core=$1; shift
RUNS=${RUNS:-../runs}
RESULTS=${RESULTS:-benchmarks/results}
K=${K:-5}; MAX_EPOCHS=${MAX_EPOCHS:-100}
SKIPVAE=${SKIPVAE:-.venv/bin/skipvae}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
declare -A GRID=([amortized]=${AMORTIZED_GRID:-benchmarks/grids/pixelcnn_bmnist_cpu.yaml}
  [sa]=${SA_GRID:-benchmarks/grids/pixelcnn_bmnist_cpu_sa.yaml})
declare -A SWEEP=([amortized]=$RUNS/pixelcnn_cpu [sa]=$RUNS/pixelcnn_cpu_sa)
declare -A FOLDER=([amortized]=pixelcnn_bmnist_cpu [sa]=pixelcnn_bmnist_cpu_sa
  [control]=pixelcnn_bmnist_cpu_control [continue]=pixelcnn_bmnist_cpu_continued)

log() { echo "$(date -Is) $* (load $(cut -d' ' -f1 /proc/loadavg))"; }
curves() {  # curves RUN NAME KIND: the run's per-epoch curves into the results
  .venv/bin/python benchmarks/curves_table.py "$1" --names "$2" \
    --columns val_elbo,val_kl,val_au --csv "$RESULTS/${FOLDER[$3]}/$2.curves.csv" > /dev/null
}

for step in "$@"; do
  kind=${step%%:*}; n=${step##*:}
  [[ -v FOLDER[$kind] && $n =~ ^[0-5]$ ]] || { echo "unknown step $step (see $0)" >&2; exit 2; }
  mkdir -p "$RESULTS/${FOLDER[$kind]}"
  grid=${GRID[$kind]:-${GRID[amortized]}}; sweep=${SWEEP[$kind]:-${SWEEP[amortized]}}
  # the cell's name, fit and diagnose commands as the sweep runs them (tab-separated, each
  # shell-quoted by shlex.join, so eval reads the words back exactly)
  IFS=$'\t' read -r _ name fit diagnose < <(
    "$SKIPVAE" sweep "$grid" --out "$sweep" --list | sed -n "$((n + 1))p")
  eval "fit=($fit)"; eval "diagnose=($diagnose)"  # skipvae fit ...; skipvae diagnose CELL ...
  cell=${diagnose[2]}; diagnose_options=("${diagnose[@]:3}")
  out=$RESULTS/${FOLDER[$kind]}/$name.json
  log "$step: $name"
  case $kind in
    amortized|sa)
      taskset -c "$core" "$SKIPVAE" sweep "$grid" --out "$sweep" --cell "$n" --quiet
      cp "$cell/diagnostics.json" "$out"
      curves "$cell" "$name" "$kind" ;;
    control)
      [[ -f $out ]] && continue
      taskset -c "$core" "$SKIPVAE" diagnose "$cell" "${diagnose_options[@]}" \
        --num-refine-steps "$K" --out "$cell/control.json"
      cp "$cell/control.json" "$out" ;;
    continue)
      [[ -f $out ]] && continue
      longer=$RUNS/pixelcnn_cpu_continued/$name
      if [[ ! -d $longer ]]; then  # the run itself, not the sweep's row or earlier diagnoses
        mkdir -p "$longer.part"
        cp -a "$cell"/{config.json,metrics.jsonl,train.log,checkpoint.pt,best.pt} "$longer.part"
        mv "$longer.part" "$longer"
      fi
      # the last --out and --num-epochs win
      taskset -c "$core" "$SKIPVAE" "${fit[@]:1}" --num-epochs "$MAX_EPOCHS" --resume --out "$longer"
      taskset -c "$core" "$SKIPVAE" diagnose "$longer" "${diagnose_options[@]}"
      cp "$longer/diagnostics.json" "$out"
      curves "$longer" "$name" continue ;;
  esac
done
log done
