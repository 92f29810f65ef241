"""Built-in callbacks, re-exported here.

`order` decides who runs first at each event (lower first). The built-in values, in one table:

| order | callback            | why there                                                          |
|-------|---------------------|--------------------------------------------------------------------|
| -40   | TrainCB             | sets learn.n_inp (its `n_inp`) before anyone reads it; its steps   |
|       |                     | are owned, so their order does not matter                          |
| -30   | DDPCB               | joins the process group, gives DeviceCB this rank's GPU, wraps the |
|       |                     | model in DDP and shards the loaders before anyone reads them       |
| -20   | DeviceCB            | moves model and batch before anyone reads them                     |
| -15   | SWACB               | copies the model at before_fit after DeviceCB moved it, before     |
|       |                     | HooksCallback hooks it; makes the schedulers stand down at         |
|       |                     | swa_start before they count their steps                            |
| -10   | BatchTransformCB    | augments the batch once it is on the device                        |
|  -5   | MixedPrecisionCB    | enters autocast after the batch is moved and augmented in float32; |
|       |                     | leaves it at after_loss before the other after_loss readers        |
|   0   | (default)           |                                                                    |
|   0   | HooksCallback,      | order does not matter: the hooks fire inside the model's forward;  |
|       | ActivationStats     | they are registered at before_fit and removed at cleanup_fit       |
|   5   | TerminateOnNaNCB    | at after_loss, before the backward; at after_epoch, before         |
|       |                     | CheckpointCB could save a broken model                             |
|  10   | MetricsCB           | after callbacks that change preds/loss; before those reading results|
|  15   | GradAccumCB         | at after_backward: cancels the step between accumulation boundaries|
|       |                     | (so GradClipCB at 25 clips only real steps); averages the grads    |
|  20   | BatchSchedCB,       | after MetricsCB: ReduceLROnPlateau reads the metric it logged at     |
|       | EpochSchedCB        | after_epoch. They step at cleanup_batch / cleanup_epoch, so every    |
|       |                     | after_batch reader sees the lr the batch trained with               |
|  20   | LRFinderCB          | reads the loss at after_batch, grows the lr at cleanup_batch (as a   |
|       |                     | scheduler); never combine it with one                              |
|  25   | RecorderCB          | records at after_batch, before the schedulers step (cleanup_batch)  |
|  25   | GradClipCB          | at after_backward, after GradAccumCB (15) cancelled in-between steps|
|  30   | ProgressCB          | draws what MetricsCB logged                                        |
|  35   | CSVLoggerCB,        | write MetricsCB's row at after_epoch; read the lr at after_batch,  |
|       | TensorBoardCB       | before the schedulers step (cleanup_batch)                         |
|  70   | EarlyStoppingCB     | reads MetricsCB's value at after_epoch; cancels at the next        |
|       |                     | training batch, so CheckpointCB still saves the last epoch         |
|  80   | CheckpointCB        | saves at the epoch's last pass's cleanup_epoch, after everyone     |
|       |                     | above (schedulers, early stopping): their state is the epoch's end |
| 100   | SingleBatchCB       | cancels after the first batch, once every after_batch reader above |
|       |                     | (metrics, recorders, loggers) has seen it                          |
| inf   | ResumeCB            | made by fit(resume=...): loads the checkpoint after every other    |
|       |                     | before_fit (schedulers built, model moved, optimizer final)        |

Checkpointing must save scheduler state after order 20 at the validation pass's after_epoch (or later), and load it
after order 20 at before_fit, when the scheduling callbacks have built their schedulers.
"""
from .._lazy import lazy_exports

_EXPORTS = {"Accuracy": "..accuracy"} | {name: f".{module}" for module, names in {
    "activations": ["ActivationStats", "Hook", "Hooks", "HooksCallback", "append_stats", "get_hist", "get_min"],
    "augment": ["BatchTransformCB"],
    "basic": ["DeviceCB", "SingleBatchCB", "TrainCB"],
    "checkpoint": ["CheckpointCB", "CheckpointMismatchError", "load_checkpoint"],
    "ddp": ["DDPCB"],
    "grad_accum": ["GradAccumCB"],
    "guards": ["EarlyStoppingCB", "GradClipCB", "NonFiniteLossError", "TerminateOnNaNCB"],
    "loggers": ["CSVLoggerCB", "TensorBoardCB"],
    "lr_finder": ["LRFinderCB", "LRFinderResult"],
    "metrics": ["MetricsCB"],
    "mixed_precision": ["MixedPrecisionCB"],
    "progress": ["ProgressCB"],
    "resume": ["ResumeCB"],
    "scheduling": ["BaseSchedCB", "BatchSchedCB", "EpochSchedCB", "RecorderCB", "_beta1", "_lr", "_mom"],
    "swa": ["SWACB"],
}.items() for name in names}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)  # each module is imported when one of its names is used
