"""Layers (PyTorch-shaped) and the functional API (``cubn.nn.functional``)."""
from . import functional
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .batchrenorm import BatchRenorm1d, BatchRenorm2d
from .conv import Conv2d
from .layers import (GELU, CrossEntropyLoss, Dropout, Flatten, Identity, LeakyReLU, MSELoss, ReLU, SiLU, Sigmoid,
                     Softmax, Tanh)
from .linear import Linear
from .module import Module, Parameter, Sequential
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .rmsnorm import RMSNorm
from .rownorm import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm

__all__ = ["functional", "Module", "Parameter", "Sequential", "Linear", "ReLU", "Identity",
           "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchRenorm1d", "BatchRenorm2d",
           "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm",
           "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten", "Dropout", "LeakyReLU", "GELU",
           "SiLU", "Sigmoid", "Tanh", "Softmax", "CrossEntropyLoss", "MSELoss"]
