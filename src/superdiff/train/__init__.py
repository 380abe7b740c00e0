"""Training: losses, the optimiser, the resumable `fit` loop with EMA and
checkpoints, and its pieces; data parallelism over several devices."""

from .._sampler import sample_sharded as sample_sharded, sharded_noise as sharded_noise
from .._sharding import (
    batch_sharding as batch_sharding,
    data_mesh as data_mesh,
    maybe_initialize_distributed as maybe_initialize_distributed,
    replicate as replicate,
    replicated as replicated,
    shard_batch as shard_batch,
)
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
