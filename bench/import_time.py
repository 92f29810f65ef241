"""What `import miniai` costs beyond `import torch`, in fresh processes: python bench/import_time.py --reps 7"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys, time
t0 = time.perf_counter(); import torch; t1 = time.perf_counter()
import miniai; t2 = time.perf_counter()
from miniai import TrainLearner, DeviceCB, MetricsCB, ProgressCB, Accuracy, get_dls; t3 = time.perf_counter()
heavy = [m for m in ("matplotlib", "fastprogress", "datasets", "torcheval") if m in sys.modules]
print(json.dumps({"torch": t1 - t0, "miniai": t2 - t1, "training_names": t3 - t2, "heavy": heavy}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                                      cwd=ROOT, env={"PYTHONPATH": str(ROOT)}).stdout) for _ in range(args.reps)]
    for key, what in (("torch", "import torch"), ("miniai", "import miniai, beyond torch"),
                      ("training_names", "then the names a training script uses (learner, callbacks, data)")):
        values = [r[key] for r in runs]
        print(f"{what:60s} median {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})")
    print(f"heavy libraries loaded by then: {runs[0]['heavy'] or 'none'}")


if __name__ == "__main__":
    main()
