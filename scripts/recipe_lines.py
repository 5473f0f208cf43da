#!/usr/bin/env python3
"""Per recipe file: non-blank lines, comment lines and their share of them; then the median.

A recipe should read in a minute: the median recipe file stays under 80 non-blank lines and no
recipe's comments exceed a third of its lines (trial histories go to docs/experiments/<method>.md).
Exits 1 when either bound is broken. Usage: python3 scripts/recipe_lines.py [Experiments/Recipes]
"""
import pathlib
import statistics
import sys

folder = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent.parent / "Experiments" / "Recipes")
rows = []
for path in sorted(folder.glob("*.fs")):
    every = path.read_text(encoding="utf-8").splitlines()
    lines = [line for line in every if line.strip()]
    comments = sum(1 for line in lines if line.lstrip().startswith("//"))
    rows.append((path.name, len(lines), comments, len(lines)))

print(f"{'recipe file':<22} {'lines':>6} {'comments':>9} {'share':>6}")
for name, total, comments, every in rows:
    print(f"{name:<22} {total:>6} {comments:>9} {comments / every:>6.0%}")
median = statistics.median(total for _, total, _, _ in rows)
worst = max(rows, key=lambda r: r[2] / r[3])
print(f"median {median:g} non-blank lines over {len(rows)} files; highest comment share {worst[2] / worst[3]:.0%} ({worst[0]})")
too_long = median >= 80
too_chatty = [name for name, _, comments, every in rows if comments * 3 > every]
if too_long:
    print("median recipe file is 80 non-blank lines or more")
if too_chatty:
    print("comments over a third of the lines: " + ", ".join(too_chatty))
sys.exit(1 if too_long or too_chatty else 0)
