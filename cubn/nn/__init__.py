"""Layers (PyTorch-shaped) and the functional API (``cubn.nn.functional``)."""
from . import functional
from .activation import Identity, ReLU
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .batchrenorm import BatchRenorm1d, BatchRenorm2d
from .linear import Linear
from .module import Module, Parameter, Sequential
from .rmsnorm import RMSNorm
from .rownorm import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm

__all__ = ["functional", "Module", "Parameter", "Sequential", "Linear", "ReLU", "Identity",
           "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchRenorm1d", "BatchRenorm2d",
           "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm"]
