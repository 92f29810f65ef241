"""What users pay before training starts: `import miniai` is light, and the CPU allocator is protected."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import miniai

HEAVY = ("matplotlib", "fastprogress", "datasets", "torcheval")


def loaded_after(code: str, env: dict | None = None) -> list[str]:
    """The heavy modules loaded after running `code` in a fresh interpreter."""
    script = textwrap.dedent(code) + f"\nimport sys\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, check=True,
                         env=env)
    return eval(out.stdout.strip().splitlines()[-1])


def test_import_miniai_loads_no_plotting_progress_or_hub_libraries():
    assert loaded_after("import miniai") == []


def test_a_plain_fit_from_a_script_loads_none_of_them_either():
    code = """
        import os, torch, torch.nn.functional as F
        from torch import nn
        from miniai import TrainLearner, DeviceCB, ProgressCB, MetricsCB, TensorLoader, DataLoaders
        x = torch.randn(64, 3); y = x.sum(1, keepdim=True)
        dls = DataLoaders(TensorLoader(x, y, bs=16, shuffle=True), TensorLoader(x, y, bs=16))
        TrainLearner(nn.Linear(3, 1), dls, F.mse_loss, lr=0.1, cbs=[DeviceCB("cpu"), MetricsCB(),
                     ProgressCB(mode="plain")]).fit(1)
    """
    assert loaded_after(code) == []


def test_set_seed_does_not_pay_for_torchs_deterministic_mode_switch():
    """torch.use_deterministic_algorithms(False) imports sympy, triton and torch.distributed (1.7 s on the CI
    machine): set_seed called it every time, so every seeded script, notebook and CLI run paid for it."""
    code = """
        import sys, torch
        from miniai.utils import set_seed
        set_seed(42)
        print(["sympy" in sys.modules, torch.are_deterministic_algorithms_enabled()])
        set_seed(42, deterministic=True)
        print([torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic])
        set_seed(42)
        print([torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic])
    """
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert out[:3] == ["[False, False]", "[True, True]", "[False, False]"]


def test_star_import_still_brings_every_name():
    namespace: dict = {}
    exec("from miniai import *", namespace)
    assert set(miniai.__all__) <= set(namespace) and "TrainLearner" in dir(miniai)
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        miniai.NoSuchThing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_cpu_training_fixes_the_malloc_thresholds_unless_told_not_to():
    code = """
        import torch, torch.nn.functional as F
        from torch import nn
        import miniai.utils as u
        from miniai import TrainLearner, DeviceCB, TensorLoader, DataLoaders
        x = torch.randn(32, 3)
        dls = DataLoaders(TensorLoader(x, x[:, :1], bs=16), TensorLoader(x, x[:, :1], bs=16))
        TrainLearner(nn.Linear(3, 1), dls, F.mse_loss, lr=0.1, cbs=[DeviceCB("cpu")]).fit(1)
        print(u._MALLOC_FIXED)
    """
    run = lambda env: subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)],  # noqa: E731
                                     capture_output=True, text=True, check=True, env=env).stdout.split()[0]
    import os
    assert run(dict(os.environ)) == "True"
    assert run({**os.environ, "MINIAI_MALLOC": "default"}) == "False"


def test_an_unknown_malloc_setting_is_warned_of_not_silently_ignored():
    """MINIAI_MALLOC=off (meant as an opt-out) fixed the thresholds all the same, without a word. A warning, not an
    error: a tuning variable must not break an inference process (DeviceCB runs in get_preds too)."""
    code = """
        import warnings, torch
        import torch.nn.functional as F
        from torch import nn
        import miniai.utils as u
        from miniai import TrainLearner, DeviceCB, TensorLoader, DataLoaders
        x = torch.randn(32, 3)
        dls = DataLoaders(TensorLoader(x, x[:, :1], bs=16), TensorLoader(x, x[:, :1], bs=16))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            learn = TrainLearner(nn.Linear(3, 1), dls, F.mse_loss, lr=0.1, cbs=[DeviceCB("cpu")])
            learn.get_preds()
            learn.fit(1)
        print(u._MALLOC_FIXED, sum("MINIAI_MALLOC='off' is not a value" in str(m.message) for m in w))
    """
    import os
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True,
                         env={**os.environ, "MINIAI_MALLOC": "off "}).stdout.split()
    assert out == ["True", "1"]  # fixed, and said once


def test_the_loop_imports_only_its_checks_and_the_checks_import_no_other_miniai_module():
    """The arrows point one way (the callbacks import learner.py, never the reverse at import time): importing the
    loop loads no callback, data or plotting module, so it reads and runs on its own."""
    code = """
        import sys
        import miniai.checks
        checks_only = sorted(m for m in sys.modules if m.startswith("miniai."))
        import miniai.learner
        print(checks_only, sorted(m for m in sys.modules if m.startswith("miniai.")))
    """
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, check=True)
    checks_only, with_learner = eval("(" + out.stdout.strip().splitlines()[-1].replace("] [", "], [") + ")")
    package_itself = ["miniai._course", "miniai._lazy"]  # `import miniai` (lazy re-exports, the course's names)
    assert checks_only == package_itself + ["miniai.checks"]
    assert with_learner == package_itself + ["miniai.checks", "miniai.conveniences", "miniai.learner"]


def test_the_loop_stays_one_short_file():
    """A soft line budget (tinygrad's sz.py idea): learner.py, its docstring tables included, is read top to bottom,
    so a change that makes it longer has to raise this number on purpose, where a reviewer sees it."""
    from pathlib import Path
    lines = len(Path(miniai.__file__).with_name("learner.py").read_text().splitlines())
    assert lines <= 257, f"miniai/learner.py has {lines} lines (budget 257): move what is not the loop out of it"
