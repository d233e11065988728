#!/usr/bin/env python3
"""The mpi4py.futures side of the MPI rows of multiprocessing-benchmarks.

Run as: mpirun -n 3 python3 -m mpi4py.futures mpi4py_benchmarks.py --tasks N --repeats R
Rank 0 (this file as __main__) is the master; the other ranks are the
pool's workers, which import this file as "__worker__" to find `square`.
Prints one JSON line: tasks per second of map(square) at chunksize 1 and
100, and round trips per second of submit(square).result(), R samples each.
"""

import argparse
import json
import sys
import time


def square(x):
    return x * x


def map_rate(executor, n, chunksize):
    start = time.perf_counter()
    total = sum(executor.map(square, range(n), chunksize=chunksize))
    elapsed = time.perf_counter() - start
    if total != (n - 1) * n * (2 * n - 1) // 6:
        raise RuntimeError("wrong result")
    return n / elapsed


def round_trips(executor, n):
    start = time.perf_counter()
    for i in range(n):
        if executor.submit(square, i).result() != i * i:
            raise RuntimeError("wrong result")
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100000)
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from mpi4py.futures import MPIPoolExecutor
    with MPIPoolExecutor() as executor:
        list(executor.map(square, range(100), chunksize=1))  # every worker up
        out = {
            "chunk1": [map_rate(executor, args.tasks, 1) for _ in range(args.repeats)],
            "chunk100": [map_rate(executor, args.tasks, 100) for _ in range(args.repeats)],
            "roundTrips": [round_trips(executor, args.round_trips) for _ in range(args.repeats)],
        }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
