#!/usr/bin/env bash
# Mutation testing of models/, guides/, infer/, diagnostics/ and checkpoint.py (issue 15).
#
#   benchmarks/mutation.sh [--label before|extension|after] [MUTANT_NAME_OR_GLOB ...]
#
# mutmut 3 (configuration: setup.cfg [mutmut]) copies the package to mutants/, runs the
# selected tests once to record which tests call which function, then runs each mutant
# against those tests only (fastest first, stopping at the first failure), on one core.
# Results are cached in mutants/: a second run tests only new or changed functions; name
# mutants (globs allowed, e.g. 'pyro_skipvae.infer.refine*') to rerun them. Afterwards
# benchmarks/mutation.py writes benchmarks/results/mutation.json and the list of survivors.
set -euo pipefail
cd "$(dirname "$0")/.."
label=after
if [[ "${1:-}" == "--label" ]]; then label=$2; shift 2; fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# the mutated copy lives in mutants/, so the data folder cannot be found beside it
export SKIPVAE_DATA_DIR="${SKIPVAE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
# a mutant can ask for absurd memory (a size constant mutated inside a shape): let that fail
# as an exception in its own test process rather than wake the OOM killer (16 GiB of
# address space per process; the run itself needs about 5)
ulimit -v $((16 * 1024 * 1024))
start=$(date +%s)
python -m mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@"
python benchmarks/mutation.py --label "$label" --wall-seconds $(($(date +%s) - start))
if [[ "$label" == after ]]; then python benchmarks/mutation_report.py; fi
