"""robust-snn: adversarial robustness toolkit for spiking neural networks.

Public API::

    import robust_snn
    model = robust_snn.load_model()            # shipped CSNN, eval mode
    logits = model(x)                          # x: [B, 1, 28, 28] in [0, 1]
    from robust_snn.attacks import evaluate    # attacks through surrogate gradients
"""
__version__ = "0.1.0"

from .checkpoint import load_model, save_checkpoint  # noqa: E402
from .errors import RobustSNNError  # noqa: E402
from .graphs import GraphedClassifier  # noqa: E402
from .models import SpikingClassifier, build_model  # noqa: E402
from .neurons import use_surrogate  # noqa: E402
from .utils import keep_freed_memory, strict_fp32  # noqa: E402

__all__ = ["GraphedClassifier", "RobustSNNError", "SpikingClassifier", "build_model", "keep_freed_memory", "load_model",
           "save_checkpoint", "strict_fp32", "use_surrogate", "__version__"]
