#!/usr/bin/env bash
# All-reduce of float32 between 2 processes on this machine, Open MPI against gloo (TCP transport,
# file-store rendezvous): the measurement behind docs/distributed.md's choice of MPI.
# Needs openmpi-bin, libopenmpi-dev, libgloo-dev and g++ (apt). Prints one line per message size.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mpicc -O2 "$here/mpi_allreduce.c" -o "$work/mpi_allreduce"
g++ -O2 -std=c++17 "$here/gloo_allreduce.cc" -o "$work/gloo_allreduce" -lgloo -lpthread
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -n 2 --oversubscribe "$work/mpi_allreduce"
mkdir "$work/store"
"$work/gloo_allreduce" 1 2 "$work/store" &
"$work/gloo_allreduce" 0 2 "$work/store"
wait
