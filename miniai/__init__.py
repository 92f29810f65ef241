"""miniai: a callback-based mini training framework for PyTorch.

`from miniai import *` brings the names below, for notebooks; inside the package every import is explicit.
"""
from .callbacks import DeviceCB, MetricsCB, ProgressCB, SingleBatchCB, TrainCB
from .learner import (EVENTS, STEPS, Callback, CancelBatchException, CancelEpochException, CancelFitException,
                      CancelStepException,
                      Learner, MomentumLearner, TrainLearner)

__version__ = "0.1.0"
__all__ = ["EVENTS", "STEPS", "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException", "CancelStepException",
           "Learner", "MomentumLearner", "TrainLearner",
           "DeviceCB", "MetricsCB", "ProgressCB", "SingleBatchCB", "TrainCB"]
