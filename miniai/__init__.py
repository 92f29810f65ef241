"""miniai: a callback-based mini training framework for PyTorch.

`from miniai import *` brings the names below, for notebooks; inside the package every import is explicit. The
fast.ai course's module names work too (`from miniai.datasets import *`, `miniai.sgd`, ...: see miniai/_course.py).
Each name's module is imported when the name is first used, so `import miniai` is light: a script that never
plots never imports matplotlib, nor fastprogress, `datasets` or torch.distributed unless it uses them.
"""
from ._course import install as _install_course_modules
from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {name: f".{module}" for module, names in {
    "checks": ["MiniaiWarning"],
    "learner": ["EVENTS", "STEPS", "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException",
                "CancelStepException", "Learner"],
    "supervised": ["MomentumLearner", "TrainLearner"],
    "callbacks.basic": ["DeviceCB", "SingleBatchCB", "TrainCB", "LossInputError"],
    "callbacks.metrics": ["MetricsCB"],
    "accuracy": ["Accuracy"],
    "callbacks.progress": ["ProgressCB"],
    "callbacks.ddp": ["DDPCB"],
    "callbacks.checkpoint": ["CheckpointCB", "CheckpointMismatchError", "load_checkpoint"],
    "callbacks.guards": ["EarlyStoppingCB", "GradClipCB", "NonFiniteLossError", "TerminateOnNaNCB"],
    "callbacks.activations": ["Hook", "Hooks", "HooksCallback", "ActivationStats", "append_stats", "get_hist",
                              "get_min"],
    "callbacks.loggers": ["CSVLoggerCB", "TensorBoardCB"],
    "callbacks.lr_finder": ["LRFinderCB", "LRFinderResult"],
    "callbacks.scheduling": ["BaseSchedCB", "BatchSchedCB", "EpochSchedCB", "RecorderCB", "_lr", "_mom", "_beta1"],
    "callbacks.augment": ["BatchTransformCB"],
    "callbacks.swa": ["SWACB"],
    "callbacks.grad_accum": ["GradAccumCB"],
    "callbacks.mixed_precision": ["MixedPrecisionCB"],
    "callbacks.preds": ["capture_preds", "get_preds", "tta"],
    "inference": ["Prediction", "load_learner"],
    "interpret": ["Interpretation"],
    "summary": ["ModelSummary"],
    "models": ["GeneralRelu", "ResBlock", "conv", "get_model", "get_convnet", "get_resnet", "init_weights", "act_gr",
               "lsuv_init"],
    "augment": ["Compose", "RandomCrop", "RandomErase", "RandomFlip", "batch_tfms"],
    "utils": ["def_device", "model_device", "set_seed", "to_cpu", "to_device"],
    "schedulers": ["CosineAnnealing", "CosineOneCycle", "OneCycle", "WarmupCosine", "lr_trajectory"],
    "data": ["DataLoaders", "TensorLoader", "get_dls", "Normalize", "collate_dict"],
    "idx": ["read_idx", "write_idx"],
    "plotting": ["plot_losses", "plot_lrs", "show_image", "show_images", "get_grid", "subplots",
                 "plot_confusion_matrix", "show_predictions"],
}.items() for name in names}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
_install_course_modules()  # `from miniai.datasets import *` and the course's other module names (miniai/_course.py)
