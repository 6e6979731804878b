"""DER: Dynamically Expandable Representation (Yan, Xie, He, CVPR 2021).

Not Dark Experience Replay. One ResNet-32 feature extractor is added per
incremental step; old ones are frozen. Modules:

* ``protocol``: the protocol as library calls (``learn_step``, ``run_protocol``,
  ``save_state``, ``restore_state``; see docs/der.md);
* ``config``: ``DERConfig`` and the PyCIL ``PRESETS``;
* ``step``: one incremental step (``learn_step``) and its helpers;
* ``resnet``: CIFAR ResNet-32 (option-A shortcuts), width and inner widths configurable;
* ``model``: DER state, expansion, forward pass, loss;
* ``augment``: on-device crop/flip/brightness + normalisation;
* ``train``: optimizer, jitted data-parallel train step, epochs;
* ``memory``: herding exemplar memory;
* ``bias_correction``: weight alignment and balanced classifier retraining;
* ``pruning``: channel-mask pruning (paper section 3.3) and materialisation;
* ``evaluate``: accuracies and continual-learning metrics.
"""

from den_jax.der import (
    augment,
    bias_correction,
    config,
    evaluate,
    memory,
    model,
    protocol,
    pruning,
    resnet,
    step,
    train,
)
from den_jax.der.config import PRESETS, DERConfig
from den_jax.der.model import DERState, der_loss, expand, forward, init_der_state
from den_jax.der.protocol import (
    StreamData,
    learn_step,
    make_stream,
    restore_state,
    run_protocol,
    save_state,
)
from den_jax.der.resnet import ResNet32

__all__ = [
    "PRESETS",
    "DERConfig",
    "DERState",
    "ResNet32",
    "StreamData",
    "augment",
    "bias_correction",
    "config",
    "der_loss",
    "evaluate",
    "expand",
    "forward",
    "init_der_state",
    "learn_step",
    "make_stream",
    "memory",
    "model",
    "protocol",
    "pruning",
    "resnet",
    "restore_state",
    "run_protocol",
    "save_state",
    "step",
    "train",
]
