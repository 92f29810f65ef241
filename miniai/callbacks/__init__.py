"""Built-in callbacks, re-exported here.

`order` decides who runs first at each event (lower first). The built-in values, in one table:

| order | callback            | why there                                                          |
|-------|---------------------|--------------------------------------------------------------------|
| -20   | DeviceCB            | moves model and batch before anyone reads them                     |
| -10   | BatchTransformCB    | augments the batch once it is on the device                        |
|   0   | TrainCB, (default)  |                                                                    |
|   1   | SingleBatchCB       | cancels after the first batch, once the others have seen it        |
|  10   | MetricsCB           | after callbacks that change preds/loss; before those reading results|
|  30   | ProgressCB          | draws what MetricsCB logged                                        |
"""
from .basic import DeviceCB, SingleBatchCB, TrainCB
from .metrics import MetricsCB
from .progress import ProgressCB

__all__ = ["DeviceCB", "TrainCB", "SingleBatchCB", "MetricsCB", "ProgressCB"]
