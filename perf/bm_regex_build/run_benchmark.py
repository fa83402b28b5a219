"""regex_build: regular expressions over text plus string building.

Per iteration: tokenises a config-file-like text with re.finditer, pulls
fields out with groups, rewrites it with re.sub and a callback, and builds
an output document piece by piece with list appends, % formatting and
str.join (a template engine's or a log parser's work).

Timed: the iterations (the input text is built once; patterns are
compiled once, as real code does).
"""
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

N_SECTIONS = 60
KEYS_PER_SECTION = 20
SEED = 24

SECTION = re.compile(r"^\[(\w+)\]$", re.M)
PAIR = re.compile(r"^(\w+)\s*=\s*(.*?)\s*(?:#.*)?$", re.M)
VAR = re.compile(r"\$\{(\w+)\}")
NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")


def make_text(rng, n):
    out = []
    for s in range(n):
        out.append("[section%d]" % s)
        for k in range(KEYS_PER_SECTION):
            v = rng.choice(("${home}/data/%d" % k, "%d.%d" % (rng.randrange(100), rng.randrange(100)),
                            "value with ${user} and %d items" % rng.randrange(1000), "plain"))
            out.append("key%d = %s  # comment %d" % (k, v, k))
        out.append("")
    return "\n".join(out)


def process(text, env):
    sections = [m.group(1) for m in SECTION.finditer(text)]
    pairs = PAIR.findall(text)
    expanded = VAR.sub(lambda m: env.get(m.group(1), ""), text)
    doubled = NUMBER.sub(lambda m: str(float(m.group(0)) * 2), expanded)
    out = []
    for k, v in pairs:
        out.append("<tr><td>%s</td><td>%s</td></tr>" % (k, VAR.sub(lambda m: env.get(m.group(1), "?"), v)))
    html = "<table>\n" + "\n".join(out) + "\n</table>"
    return len(sections) + len(doubled) + len(html)


_state = {}


def bench(loops):
    text = _state.get("text")
    if text is None:
        text = _state["text"] = make_text(random.Random(SEED), benchlib.scaled(N_SECTIONS, 2))
    env = {"home": "/home/meshalloc", "user": "mesh"}
    t0 = time.perf_counter()
    for _ in range(loops):
        process(text, env)
    return time.perf_counter() - t0


if __name__ == "__main__":
    ctx = benchlib.make_runner("speed", __doc__)
    ctx.runner.bench_time_func("regex_build", bench)
