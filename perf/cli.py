"""cli - ``python -m perf``: the commands over the modules that do the work
(runner.py: run, list; instructions.py; microtable.py; report.py). The only module that
imports them all; none of them imports it."""
from __future__ import annotations

import argparse
from typing import List, Optional

from . import instructions, microtable, report, runner


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf",
                                 description="meshalloc's pyperf suites: run them under allocator configurations "
                                             "and turn the results into docs/benchmarks.md")
    sub = ap.add_subparsers(dest="cmd", required=True)
    runner.add_arguments(sub.add_parser("run", help="run the suites under each configuration (pyperf JSON per "
                                                    "configuration)"))
    report.add_arguments(sub.add_parser("report", help="write docs/benchmarks.md and docs/img/*.png from the "
                                                       "results"))
    instructions.add_arguments(sub.add_parser("instructions", help="the speed benchmarks counted in instructions "
                                                                   "(callgrind), ratios to pymalloc"))
    microtable.add_arguments(sub.add_parser("micro-table", help="malloc in C, 1-16 threads, under glibc, meshalloc, "
                                                                "jemalloc, tcmalloc and mimalloc (LD_PRELOAD)"))
    sub.add_parser("list", help="list the benchmarks and their groups")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return runner.cmd_run(args)
    if args.cmd == "report":
        return report.main(args)
    if args.cmd == "instructions":
        return instructions.cmd_instructions(args)
    if args.cmd == "micro-table":
        return microtable.cmd_micro_table(args)
    return runner.cmd_list(args)
