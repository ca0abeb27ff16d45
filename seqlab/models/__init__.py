"""Composition: blocks -> backbones -> task heads."""

from seqlab.models.blocks import Backbone, Block, ModelBuildError
from seqlab.models.model import SequenceModel, build_model

__all__ = ["Backbone", "Block", "ModelBuildError", "SequenceModel", "build_model"]
