"""Training as the original `cnn_train_dag.m` did it, in PyTorch.

- `sgd`: `MatConvNetSGD`, MatConvNet's momentum update (weight decay and
  1/batchSize inside the momentum, per-parameter multipliers);
- `schedules`: the released CUB and CARS learning-rate schedules;
- `objective`: softmax-log, or CQD's softmax-log + lambda x distillation;
- `distill_spec`, `distillers`: the distillation methods after CQD (FitNets, AT, SP, RKD, DKD);
- `metrics`: `metrics.csv` and TensorBoard events of a run folder;
- `trainer`: `TrainConfig`, `sgd_step`, `train` (epoch loop, checkpoints, resume);
- `evaluate`: per-image accuracy (the paper's metric), per-class accuracy, confusion;
- `teacher`: the teacher's logits, cached on disk, and its feature targets;
- `checkpoint`: the per-epoch checkpoint file;
- `device`: device selection and strict-fp32 / determinism settings.
"""

from cqd_port.train.distill_spec import DistillSpec
from cqd_port.train.distillers import Distiller, build_distiller
from cqd_port.train.evaluate import Evaluation, evaluate
from cqd_port.train.objective import CQD_LAMBDA, CQD_TEMPERATURE, Objective
from cqd_port.train.schedules import CARS_SCHEDULE, CUB_SCHEDULE, learning_rate, shorten_schedule
from cqd_port.train.sgd import MatConvNetSGD, Multipliers, cqd_multipliers
from cqd_port.train.teacher import TeacherTargets, teacher_logits, teacher_targets
from cqd_port.train.trainer import StepStats, TrainConfig, TrainingDiverged, TrainResult, sgd_step, train

__all__ = [
    "CARS_SCHEDULE",
    "CQD_LAMBDA",
    "CQD_TEMPERATURE",
    "CUB_SCHEDULE",
    "DistillSpec",
    "Distiller",
    "Evaluation",
    "MatConvNetSGD",
    "Multipliers",
    "Objective",
    "StepStats",
    "TeacherTargets",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "build_distiller",
    "cqd_multipliers",
    "evaluate",
    "learning_rate",
    "sgd_step",
    "shorten_schedule",
    "teacher_logits",
    "teacher_targets",
    "train",
]
