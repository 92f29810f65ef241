"""The held-out search behind miniai's training recipes: one run per call, a JSON line appended to a results file.

    python bench/recipe_search.py --base five nfs=8,16,32,64,128 label_smoothing=0.1 --out nbs/results/holdout.jsonl

Each run trains a `miniai.recipes.Recipe` (a named recipe from RECIPES, with fields overridden by `field=value`)
on 50,000 Fashion-MNIST training images and measures the accuracy on the other 10,000 (`get_dls(holdout=10_000)`,
the same split every time), with and without test-time augmentation (the flip averaged in). The test set is never
read: it is kept for the one final number of each chosen recipe (`python -m miniai train --recipe NAME`).
The results are shown and discussed in nbs/05_best_recipe.ipynb.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from miniai.accuracy import Accuracy  # noqa: E402
from miniai.callbacks.metrics import MetricsCB  # noqa: E402
from miniai.data import get_dls  # noqa: E402
from miniai.recipes import RECIPES, Recipe, recipe_learner  # noqa: E402
from miniai.utils import fix_malloc, set_seed  # noqa: E402


def parse_field(recipe: Recipe, assignment: str) -> tuple[str, object]:
    """'nfs=8,16,32' -> ('nfs', (8, 16, 32)), typed like the recipe's field; a SystemExit naming what is wrong (an
    unknown field, a value of another type: 'flip=on' was taken as False)."""
    name, _, text = assignment.partition("=")
    fields = [f.name for f in dataclasses.fields(recipe)]
    if name not in fields:
        raise SystemExit(f"recipe_search: {name!r} is no field of a Recipe ({', '.join(fields)})")
    current = getattr(recipe, name)
    try:
        if isinstance(current, tuple):
            return name, tuple(int(v) for v in text.split(","))
        if isinstance(current, bool):
            return name, {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[text.lower()]
        return name, type(current)(text)
    except (KeyError, ValueError) as e:
        kind = "true/false (1/0, yes/no)" if isinstance(current, bool) else type(current).__name__
        raise SystemExit(f"recipe_search: {assignment!r}: {name} takes {kind}, got {text!r}") from e


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", choices=list(RECIPES), default="five", help="the recipe the fields change")
    parser.add_argument("fields", nargs="*", help="field=value overrides of the recipe (e.g. epochs=5 erase=0.25)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="nbs/results/holdout.jsonl", help="the results file (appended)")
    args = parser.parse_args()
    recipe = dataclasses.replace(RECIPES[args.base], **dict(parse_field(RECIPES[args.base], f) for f in args.fields))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a"):  # now, not after the training: an --out that can't be written would lose the run
        pass
    fix_malloc()
    set_seed(args.seed)
    dls = get_dls(bs=recipe.bs, holdout=10_000)
    metrics = MetricsCB(accuracy=Accuracy())
    metrics.log_fn = lambda row: print(row, file=sys.stderr, flush=True)
    learn = recipe_learner(recipe, dls, [metrics], device="cpu")
    start = time.perf_counter()
    learn.fit(recipe.epochs)
    fit_s = time.perf_counter() - start
    probs, targets = learn.tta()
    result = {"base": args.base, "changed": args.fields, "seed": args.seed,
              "recipe": {k: v for k, v in dataclasses.asdict(recipe).items() if k != "description"},
              "holdout_accuracy": round(metrics.last["valid_accuracy"], 4),
              "holdout_accuracy_tta": round((probs.argmax(1) == targets).float().mean().item(), 4),
              "per_epoch": [round(r["accuracy"], 4) for r in metrics.history if r["train"] == "valid"],
              "fit_s": round(fit_s, 1), "s_per_epoch": round(fit_s / recipe.epochs, 1),
              "wall_s": round(time.perf_counter() - STARTED, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
