"""fibpolicy: Fibottention ViT encoders for diffusion policies and image / video classification.

Importing the package registers the ``vit_fib_*`` models in timm's model registry.
"""

from . import encoders  # noqa: F401  (registers vit_fib_* in timm)

__version__ = "0.1.0"
