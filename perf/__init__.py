"""meshalloc's benchmarks (perf/): pyperf suites for speed, fragmentation
recovery and system costs, a runner that executes them under each allocator
configuration, and a report generator. See perf/README.md.

    python -m perf run [--configs pymalloc,malloc,meshalloc,preload] [--fast]
    python -m perf report
    python -m perf list

The benchmark scripts themselves (bm_<name>/run_benchmark.py) are plain
pyperf scripts and do not import this package; they share perf/benchlib.py.
"""
