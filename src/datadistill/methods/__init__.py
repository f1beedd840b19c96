"""Distillation methods, by name: ``METHODS.get("unroll")`` is the paper's."""
from ..registry import Registry
from .base import Method
from .dc import GradientMatching, GradientMatchingDSA
from .dm import DistributionMatching
from .krr import FeatureRegressionPool, KernelRegression, NeuralTangentKernel
from .mtt import TrajectoryMatching
from .unroll import Unroll

METHODS: Registry[type[Method]] = Registry("method")
for _method in (Unroll, DistributionMatching, GradientMatching, GradientMatchingDSA,
                TrajectoryMatching, KernelRegression, FeatureRegressionPool,
                NeuralTangentKernel):
    METHODS.register(_method.name)(_method)

__all__ = ["METHODS", "Method"]
