"""Training: losses, the optimiser, the resumable `fit` loop with EMA and
checkpoints, and its pieces."""

from ._checkpoint import (
    CheckpointError as CheckpointError,
    load_checkpoint as load_checkpoint,
    save_checkpoint as save_checkpoint,
)
from ._loss import (
    batch_dsm_loss as batch_dsm_loss,
    classifier_loss as classifier_loss,
    dsm_loss as dsm_loss,
)
from ._train import (
    ArraySampler as ArraySampler,
    TrainState as TrainState,
    dsm_objective as dsm_objective,
    ema_update as ema_update,
    fit as fit,
    init_train_state as init_train_state,
    make_optimizer as make_optimizer,
    train_step as train_step,
)
