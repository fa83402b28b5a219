"""gc_walk.py - what the allocation order costs CPython's cyclic GC.

Five rounds of building 300 k tuples (each holding an int, a str and a
one-element list) and dropping them. The GC walks its object lists in
allocation order, so this is the workload where the order a span hands out
its slots (the MESH_SHUFFLE option) shows most. Prints the process CPU time
of the rounds on stderr (CPU time: a busy machine disturbs it less).

Compare side by side, alternating, e.g.:

    for i in 1 2 3 4 5 6; do for s in 0 1 2; do
      MESHALLOC=1 MESH_SHUFFLE=$s python perf/churn/gc_walk.py; done; python perf/churn/gc_walk.py; done
"""
import sys
import time

ROUNDS = 5
OBJECTS = 300_000


def main() -> None:
    c0 = time.process_time()
    for _ in range(ROUNDS):
        objs = [(i, str(i), [i]) for i in range(OBJECTS)]
        total = sum(len(x[1]) for x in objs)
        del objs
    print("checksum", total)
    print(time.process_time() - c0, file=sys.stderr)


if __name__ == "__main__":
    main()
