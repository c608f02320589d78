"""Every row of a task-suite results file against random at the same evaluation seeds.

The suite's verdict compares two rows' mean losses with twice the larger per-seed sd. A seed
fixes the evaluation proxy's initialisation and document order for every selection alike, so
part of that sd is shared; the paired difference (the row's loss minus random's at the same
seed, mean ± sd over the seeds) leaves it out. Reads what `benchmarks/suite.py --json` wrote:

    python benchmarks/paired.py benchmarks/results/suite_cpu_seeds5.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import harness
import numpy as np
import suite


def paired_line(task: str, row: str, r: dict[str, Any], random: dict[str, Any]) -> list[str]:
    difference = np.subtract(r["losses"], random["losses"])
    margin = 2 * max(r["loss_sd"], random["loss_sd"])
    return [
        task,
        row,
        f"{r['loss'] - random['loss']:+.4f}",
        f"{margin:.4f}",
        "+=-"[1 - suite.beats(r, random)],
        f"{difference.mean():+.4f} ± {difference.std():.4f}",
        "+" if difference.mean() < -2 * difference.std() else "=",
        f"{int((difference < 0).sum())}/{len(difference)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a JSON file written by suite.py --json")
    results = json.loads(parser.parse_args().results.read_text())["results"]
    lines = [
        paired_line(task, row, r, table["random"])
        for task, table in results.items()
        for row, r in table.items()
        if row != "random" and r.get("losses") and table["random"].get("losses")
    ]
    harness.print_table(
        ["task", "row", "Δ mean", "2 × larger sd", "suite", "paired Δ", "paired", "seeds below"],
        lines,
        left=2,
        title="each row against random (+: lower by more than twice the sd)",
    )


if __name__ == "__main__":
    sys.exit(main())
