"""Validation Dice against iterations of training runs (for the UpKern picture).

Reads each run's ``csv/metrics.csv`` (Lightning's CSV logger, as ``python train.py``
writes it) and plots ``val/dice_mean`` against the global step.

Run:
    python benchmarks/upkern_curves.py OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def curve(run: Path) -> list[tuple[int, float]]:
    """``(step, val/dice_mean)`` of one run, in order."""
    points = []
    with open(run / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("val/dice_mean"):
                points.append((int(row["step"]) + 1, float(row["val/dice_mean"])))
    return points


def main(out: str, runs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for spec in runs:
        label, _, path = spec.partition("=")
        pts = curve(Path(path))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        print(label, [(s, round(d, 3)) for s, d in pts])
    ax.set_xlabel("training iterations (batch 2)")
    ax.set_ylabel("validation mean foreground Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
