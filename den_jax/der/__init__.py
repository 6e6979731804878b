"""DER: Dynamically Expandable Representation (Yan, Xie, He, CVPR 2021).

Not Dark Experience Replay. One ResNet-32 feature extractor is added per
incremental step; old ones are frozen. Modules:

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
    evaluate,
    memory,
    model,
    pruning,
    resnet,
    train,
)
from den_jax.der.model import DERState, der_loss, expand, forward, init_state
from den_jax.der.resnet import ResNet32

__all__ = [
    "DERState",
    "ResNet32",
    "augment",
    "bias_correction",
    "der_loss",
    "evaluate",
    "expand",
    "forward",
    "init_state",
    "memory",
    "model",
    "pruning",
    "resnet",
    "train",
]
