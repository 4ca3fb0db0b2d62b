"""Pruning pays: the same 12-trial architecture search with and without pruning, in one run.

On the demo data, ``segkit search`` over depth (2, 3, 4) × kernel size (3, 5) × channels
(4, 8), every combination once (grid sampler), once with ``pruner=asha`` (Optuna's
successive halving, the default) and once with ``pruner=none``. Training steps are counted
(each trial's ``global_step``, read back from the study), not seconds, so the figure does not
depend on the machine's load; the best validation Dice of each study is its best complete
trial's value.

    python benchmarks/bench_search.py                      # both studies, then the table
    python benchmarks/bench_search.py --epochs 8 --workers 2 --out outputs/bench_search

Issue 24's bar: the pruned study spends <= 50% of the unpruned study's steps and its best
Dice is >= the unpruned best - 0.01.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = ("model.depth=2,3,4", "model.kernel_size=3,5", "model.channels=4,8")


def search(out: Path, pruner: str, *, epochs: int, workers: int) -> float:
    """Run one study; returns its wall time in seconds."""
    cmd = [
        sys.executable, "-m", "segkit.cli", "search", *SPACE,
        f"trainer.max_epochs={epochs}", "trainer.check_val_every_n_epoch=1",
        "data.samples_per_epoch=24", "data.batch_size=2", "data.num_workers=0",
        "data.patch_size=[32,32,24]", "data.val_max_cases=2", "model.max_channels=64",
        "calibrate_inference.enabled=false", "logger=csv", "~callbacks.pictures",
        "~callbacks.progress_bar", "~callbacks.last_every_n_steps", "print_plan=false",
        "sampler=grid", f"pruner={pruner}", f"workers={workers}", "trials=12",
        f"study=bench_{pruner}", f"out={out}",
    ]  # fmt: skip
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return time.time() - start


def summarise(out: Path, study: str) -> dict:
    import optuna

    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{out}/study.db").trials
    ran = [t for t in trials if t.user_attrs.get("run_dir")]
    complete = [t for t in ran if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    return {
        "trials": len(ran),
        "complete": len(complete),
        "pruned": sum(t.state.name == "PRUNED" for t in ran),
        "steps": sum(int(t.user_attrs.get("steps") or 0) for t in ran),
        "best_dice": best.value,
        "best_trial": " ".join(best.user_attrs["overrides"]),
        "pruned_at": sorted(
            t.user_attrs.get("pruned_at_epoch") for t in ran if t.state.name == "PRUNED"
        ),  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_search")
    args = parser.parse_args()
    results = {}
    for pruner in ("asha", "none"):
        out = args.out / pruner
        seconds = search(out, pruner, epochs=args.epochs, workers=args.workers)
        results[pruner] = {**summarise(out, f"bench_{pruner}"), "seconds": round(seconds)}
    asha, none = results["asha"], results["none"]
    ratio = asha["steps"] / none["steps"]
    gap = asha["best_dice"] - none["best_dice"]
    print("\n| study | trials | complete | pruned | training steps | best Dice | best trial | s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cells = (f"pruner={name}", r["trials"], r["complete"], r["pruned"], f"{r['steps']:,}",
                 f"{r['best_dice']:.4f}", f"`{r['best_trial']}`", r["seconds"])  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")
    print(f"\nsteps with pruning / without: {ratio:.1%} (bar: <= 50%); best Dice difference "
          f"{gap:+.4f} (bar: >= -0.01); pruned at epochs {asha['pruned_at']}")  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
