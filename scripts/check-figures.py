#!/usr/bin/env python3
"""Check a fresh bench run against the figures the docs state.

The docs carry each benchmark figure they quote as a marker next to the prose:

    <!-- figure scale.rss_mib_max median=37.9 spread=1.2 runs=3 -->

(median and spread = max - min over `runs` runs, on the machine the docs name). This script reads
the last `scale: ...` / `reencrypt: ...` line of a bench's output and fails when a figure differs
from its documented median by more than its spread (at least `--floor` percent of the median:
two runs never agree to the digit). Used after a bench run, not in the test suite (the benches
take minutes each):

    cargo bench --bench scale | tee /tmp/scale.log
    python3 scripts/check-figures.py /tmp/scale.log

Exit 0: every figure of that bench holds; 1: one does not (each is printed); 2: no bench line.
"""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs" / "reliability.md", ROOT / "docs" / "reencryption.md"]
MARKER = re.compile(r"<!-- figure (\w+)\.(\w+) median=([\d.]+) spread=([\d.]+) runs=(\d+) -->")


def documented():
    """{(bench, name): (median, spread, runs)} from the docs' markers."""
    figures = {}
    for doc in DOCS:
        for m in MARKER.finditer(doc.read_text()):
            figures[(m.group(1), m.group(2))] = (float(m.group(3)), float(m.group(4)), int(m.group(5)))
    return figures


def measured(text):
    """{(bench, name): value} from the last `<bench>: name=value ...` line of each bench."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^(scale|reencrypt): (.*)$", line.strip())
        if not m:
            continue
        for key, value in re.findall(r"(\w+)=([\d.]+)", m.group(2)):
            found[(m.group(1), key)] = float(value)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="a bench's output ('-': standard input)")
    parser.add_argument("--floor", type=float, default=5.0, help="least tolerance, percent of the median")
    args = parser.parse_args()
    text = sys.stdin.read() if args.log == "-" else pathlib.Path(args.log).read_text()
    fresh, docs = measured(text), documented()
    benches = {bench for bench, _ in fresh}
    if not benches:
        print("no `scale:` or `reencrypt:` line in the output", file=sys.stderr)
        return 2
    failed = False
    for (bench, name), (median, spread, runs) in sorted(docs.items()):
        if bench not in benches:
            continue
        value = fresh.get((bench, name))
        allowed = max(spread, median * args.floor / 100)
        if value is None:
            print(f"{bench}.{name}: documented {median} but not in this run's output")
            failed = True
        elif abs(value - median) > allowed:
            print(f"{bench}.{name}: {value} now, documented {median} ± {allowed:.2f} ({runs} runs): update the docs or find why")
            failed = True
        else:
            print(f"{bench}.{name}: {value} (documented {median} ± {allowed:.2f}) ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
