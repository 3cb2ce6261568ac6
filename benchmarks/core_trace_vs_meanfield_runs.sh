#!/usr/bin/env bash
# Trace_ELBO vs TraceMeanField_ELBO at equal time: both runs side by side, so they share the CPU.
set -u
S=${SKIPVAE:-skipvae}
COMMON="--train-size 10000 --val-size 2000 --num-epochs 10 --quiet"
OMP_NUM_THREADS=1 nice -n 10 $S fit $COMMON --elbo trace --out elbo-trace > elbo-trace.log 2>&1 &
OMP_NUM_THREADS=1 nice -n 10 $S fit $COMMON --elbo mean-field --out elbo-mean-field > elbo-mean-field.log 2>&1 &
wait
