"""The fast.ai course's module names: `from miniai.datasets import *` (conv, activations, init, sgd, resnet, accel
too) brings the names of miniai that mean what the course's did, so code written for the course's package runs.

The course (fastai/course22p2) grew its miniai one lesson at a time, one module per notebook; here each name lives
once, with its concept (callbacks/, models.py, plotting.py, ...). `COURSE_MODULES` maps each course module to
those names and the module of ours they live in. `import miniai` appends a small import hook to `sys.meta_path`
(after the standard finders, so a real module of ours is always found first): importing `miniai.<course module>`
builds a module whose `__all__` is its names, each imported from its home on first use (PEP 562).
`miniai.learner` and `miniai.augment` are real modules: their `__all__` lists the course names they lack and their
module `__getattr__` calls `course_attr`. A course name with no counterpart of the same meaning is in
`NOT_PROVIDED` with what to use instead; importing it by name raises ImportError saying so.
Imports nothing from miniai until a name is used.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["COURSE_MODULES", "NOT_PROVIDED", "NOT_PROVIDED_MODULES", "course_names", "course_attr", "course_hooks",
           "install"]

# course module -> {our module (under miniai.): the course's names it provides with their course meaning}
COURSE_MODULES: dict[str, dict[str, list[str]]] = {
    "datasets": {"data": ["DataLoaders", "collate_dict"], "_course_defs": ["inplace"],
                 "plotting": ["show_image", "subplots", "get_grid", "show_images"]},
    "conv": {"utils": ["def_device", "to_device"], "_course_defs": ["conv"]},  # (act=False: the bare Conv2d)
    # learner.py is ours too: these are the names the course's learner module had and ours lacks
    "learner": {"supervised": ["TrainLearner", "MomentumLearner"],
                "callbacks.basic": ["SingleBatchCB", "DeviceCB", "TrainCB"], "_course_defs": ["to_cpu"],
                "callbacks.metrics": ["MetricsCB"], "callbacks.progress": ["ProgressCB"],
                "callbacks.lr_finder": ["LRFinderCB", "lr_find"]},
    "activations": {"utils": ["set_seed"],
                    "callbacks.activations": ["Hook", "Hooks", "HooksCallback", "append_stats", "get_hist", "get_min",
                                              "ActivationStats"]},
    # where a name of ours means something else (init_weights also does Linear layers; get_model's nfs), the
    # course's meaning is defined in _course_defs
    "init": {"models": ["GeneralRelu", "lsuv_init", "conv"],
             "_course_defs": ["init_weights", "get_model", "BatchTransformCB"]},
    "sgd": {"callbacks.scheduling": ["BaseSchedCB", "BatchSchedCB", "RecorderCB", "EpochSchedCB"]},
    "resnet": {"models": ["act_gr", "ResBlock"]},
    # augment.py is ours too, with its own batch transforms; the course patched these two onto Learner there
    "augment": {"summary": ["summary"], "callbacks.preds": ["capture_preds"]},
    "accel": {},
}

_ERASE = ("the course's erases 0 to max_num rectangles of a fixed size, the same ones in every image of the batch; "
          "miniai.augment.RandomErase(p, max_frac) erases one rectangle of random size per image, with probability p")

# course module -> {course name: why it is not here, and what to use}
NOT_PROVIDED: dict[str, dict[str, str]] = {
    "conv": {"collate_device": "use DeviceCB() in cbs, which moves every batch"},
    "learner": {"run_cbs": "the Learner dispatches events itself, in a fit: put the work in a Callback's event "
                           "method (after_batch(self, learn), ...) and pass it in cbs",
                "with_cbs": "the Learner runs its stages itself (before_/after_/cleanup_ events): write a Callback"},
    "init": {"clean_ipython_hist": "not provided: restart the kernel to free what IPython's history holds",
             "clean_tb": "not provided: import sys; sys.last_traceback = sys.last_value = None",
             "clean_mem": "not provided: import gc; gc.collect(); torch.cuda.empty_cache()",
             "plot_func": "not provided: import matplotlib.pyplot as plt; x = torch.linspace(-5, 5, 100); "
                          "plt.plot(x, f(x))"},
    "sgd": {"HasLearnCB": "not provided: a callback receives learn in every event; keep it in before_fit if needed"},
    "augment": {"show_image_batch": "not provided: learn.fit(1, cbs=[SingleBatchCB()]) (one training step, as the "
                                    "course's took), then show_images(learn.batch[0][:9])",
                "CapturePreds": "not provided: preds, targets = learn.capture_preds() (inps=True: the inputs too, "
                                "last)",
                "rand_copy": "not provided: miniai.augment has RandomErase, RandomFlip and RandomCrop",
                "RandCopy": "not provided: miniai.augment has RandomErase, RandomFlip and RandomCrop",
                "rand_erase": _ERASE, "RandErase": _ERASE},
    "accel": {"MixedPrecision": "the course's is a TrainCB doing every step, for a plain Learner; miniai's "
                                "MixedPrecisionCB (miniai.callbacks) does backward and step only: "
                                "TrainLearner(..., cbs=[DeviceCB(), MixedPrecisionCB()])",
              "AccelerateCB": "not provided (HF accelerate): see MixedPrecisionCB and DDPCB in miniai.callbacks"},
}


# course modules with nothing of the same meaning here: importing one raises ImportError with this advice
NOT_PROVIDED_MODULES = {
    "training": "the course's miniai.training held notebook 04's hand-written loop (fit, accuracy, report, Dataset, "
                "get_dls): use TrainLearner with MetricsCB(accuracy=Accuracy()) (from miniai import *), and "
                "miniai.data.get_dls for Fashion-MNIST",
}


def course_names(course_module: str) -> dict[str, str]:
    """{name: absolute module it lives in} for one course module, e.g. course_names('sgd')['RecorderCB']."""
    return {name: f"miniai.{home}" for home, names in COURSE_MODULES[course_module].items() for name in names}


def course_attr(module_name: str, name: str) -> Any:
    """The value of the course name `name` in `module_name` (e.g. 'miniai.learner'), imported from its home and
    kept in that module; a course name not provided raises ImportError saying what to use instead."""
    course = module_name.rpartition(".")[2]
    home = course_names(course).get(name)
    if home is not None:
        value = getattr(importlib.import_module(home), name)
        vars(sys.modules[module_name])[name] = value  # later lookups are plain attribute reads
        return value
    why = NOT_PROVIDED.get(course, {}).get(name)
    if why is not None:
        # ImportError, not AttributeError: `from m import name` would swap an AttributeError for a bare
        # "cannot import name", losing the advice
        raise ImportError(f"the course's miniai.{course}.{name} has no counterpart in miniai with the same meaning: "
                          f"{why}")
    raise AttributeError(f"module {module_name!r} has no attribute {name!r}")


def course_hooks(module_name: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module `__getattr__` (`course_attr`) and `__dir__` (its globals and `__all__`, so tab completion shows the
    course's names before their first use) of the module `module_name`, which is being imported."""
    module = sys.modules[module_name]
    return (lambda name: course_attr(module_name, name)), (lambda: sorted(set(vars(module)) | set(module.__all__)))


class _CourseModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `miniai.<course module>` when no real module has that name, and fills it from the table."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, course = fullname.rpartition(".")
        if package != "miniai" or course not in {**COURSE_MODULES, **NOT_PROVIDED_MODULES} or course in _REAL:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin="miniai._course")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        name, course = module.__name__, module.__name__.rpartition(".")[2]
        if course in NOT_PROVIDED_MODULES:
            raise ImportError(f"miniai has no course module {name}: {NOT_PROVIDED_MODULES[course]}", name=name)
        module.__doc__ = (f"The fast.ai course's miniai.{course}: the names miniai has with the same meaning, "
                          "imported from where they live on first use (see miniai/_course.py).")
        module.__all__ = list(course_names(course))
        module.__getattr__, module.__dir__ = course_hooks(name)


_REAL = ("learner", "augment")  # real modules of ours; the hook never stands in for them
_HOOK = _CourseModules()


def install() -> None:
    """Let `import miniai.<course module>` find the course modules (once per process; `import miniai` calls it)."""
    if not any(isinstance(finder, _CourseModules) for finder in sys.meta_path):
        sys.meta_path.append(_HOOK)
