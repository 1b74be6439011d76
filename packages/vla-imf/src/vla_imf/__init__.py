"""Improved MeanFlow one-step action generation with vanilla and Attention-Residual backbones."""

from importlib.metadata import version as _version

from vla_imf.attnres import AttnResBackbone, AttnResOperator, AttnResSubLayer
from vla_imf.backbones import CHECKPOINT_LAYER_TYPES, Backbone, build_backbone
from vla_imf.config import (
    AttnResBackboneConfig,
    BackboneConfig,
    IMFPolicyConfig,
    ObjectiveConfig,
    VanillaBackboneConfig,
)
from vla_imf.encoders import ImageEncoder, LowDimEncoder, ResNet18GN, SpatialSoftmax
from vla_imf.normalizer import MinMaxNormalizer
from vla_imf.objective import (
    ForwardADUnsupportedError,
    LossOutput,
    flow_matching_loss,
    imf_compound_velocity,
    imf_loss,
    jvp_du_dt,
    regression_loss,
    sample_euler,
    sample_mean_flow,
    sample_time_pairs,
)
from vla_imf.policy import IMFPolicy
from vla_imf.vanilla import VanillaBackbone

__version__ = _version("vla-imf")

__all__ = [
    "CHECKPOINT_LAYER_TYPES",
    "AttnResBackbone",
    "AttnResBackboneConfig",
    "AttnResOperator",
    "AttnResSubLayer",
    "Backbone",
    "BackboneConfig",
    "ForwardADUnsupportedError",
    "IMFPolicy",
    "IMFPolicyConfig",
    "ImageEncoder",
    "LossOutput",
    "LowDimEncoder",
    "MinMaxNormalizer",
    "ObjectiveConfig",
    "ResNet18GN",
    "SpatialSoftmax",
    "VanillaBackbone",
    "VanillaBackboneConfig",
    "__version__",
    "build_backbone",
    "flow_matching_loss",
    "imf_compound_velocity",
    "imf_loss",
    "jvp_du_dt",
    "regression_loss",
    "sample_euler",
    "sample_mean_flow",
    "sample_time_pairs",
]
