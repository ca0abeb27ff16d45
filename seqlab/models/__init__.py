"""Models from modules: ``Block`` (a residual block around any built mixer), ``Backbone`` (a
stack of blocks), task models (``Classifier``, ``DualEncoder``, ``LanguageModel``) taking an
embedding, a backbone and a head, and ``build_model``, the config path over them
(docs/architecture.md, "Models from modules")."""

from seqlab.models.blocks import FFN, Backbone, Block, ModelBuildError, Norm, mixer_is_causal
from seqlab.models.builder import build_mixer, build_model
from seqlab.models.tasks import Classifier, DualEncoder, LanguageModel, MLPHead, pool

__all__ = [
    "FFN",
    "Backbone",
    "Block",
    "Classifier",
    "DualEncoder",
    "LanguageModel",
    "MLPHead",
    "ModelBuildError",
    "Norm",
    "build_mixer",
    "build_model",
    "mixer_is_causal",
    "pool",
]
