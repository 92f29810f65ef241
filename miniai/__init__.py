"""miniai: a callback-based mini training framework for PyTorch.

`from miniai import *` brings the names below, for notebooks; inside the package every import is explicit.
"""
from .callbacks import (ActivationStats, Hook, Hooks, HooksCallback, LRFinderCB, LRFinderResult, append_stats,
                        BaseSchedCB, BatchSchedCB, DeviceCB, EpochSchedCB, MetricsCB, ProgressCB, RecorderCB,
                        SingleBatchCB, TrainCB, _beta1, _lr, _mom)
from .callbacks import SWACB, BatchTransformCB
from .callbacks import GradAccumCB, MixedPrecisionCB
from .callbacks import (CheckpointCB, CheckpointMismatchError, EarlyStoppingCB, GradClipCB, NonFiniteLossError,
                        TerminateOnNaNCB, load_checkpoint)
from .callbacks import DDPCB
from .callbacks.basic import LossInputError
from .augment import Compose, RandomCrop, RandomErase, RandomFlip, batch_tfms
from .data import DataLoaders, TensorLoader, get_dls
from .idx import read_idx, write_idx
from .learner import (EVENTS, STEPS, Callback, CancelBatchException, CancelEpochException, CancelFitException,
                      CancelStepException,
                      Learner, MomentumLearner, TrainLearner)

from .models import GeneralRelu, ResBlock, conv, get_model, get_resnet, init_weights
from .plotting import plot_losses, plot_lrs, show_image, show_images
from .schedulers import CosineAnnealing, CosineOneCycle, OneCycle, WarmupCosine, lr_trajectory
from .utils import def_device, model_device, set_seed, to_cpu, to_device

__version__ = "0.1.0"
__all__ = ["EVENTS", "STEPS", "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException", "CancelStepException",
           "Learner", "MomentumLearner", "TrainLearner",
           "DDPCB", "DeviceCB", "MetricsCB", "ProgressCB", "SingleBatchCB", "TrainCB",
           "CheckpointCB", "CheckpointMismatchError", "EarlyStoppingCB", "GradClipCB", "NonFiniteLossError",
           "TerminateOnNaNCB", "load_checkpoint", "LossInputError",
           "Hook", "Hooks", "HooksCallback", "ActivationStats", "append_stats", "LRFinderCB", "LRFinderResult",
           "BaseSchedCB", "BatchSchedCB", "EpochSchedCB", "RecorderCB", "_lr", "_mom", "_beta1",
           "BatchTransformCB", "SWACB", "GradAccumCB", "MixedPrecisionCB",
           "GeneralRelu", "ResBlock", "conv", "get_model", "get_resnet", "init_weights",
           "Compose", "RandomCrop", "RandomErase", "RandomFlip", "batch_tfms",
           "def_device", "model_device", "set_seed", "to_cpu", "to_device",
           "CosineAnnealing", "CosineOneCycle", "OneCycle", "WarmupCosine", "lr_trajectory",
           "DataLoaders", "TensorLoader", "get_dls", "read_idx", "write_idx",
           "plot_losses", "plot_lrs", "show_image", "show_images"]
