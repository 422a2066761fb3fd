"""Layers (PyTorch-shaped) and the functional API (``cubn.nn.functional``)."""
from . import functional, init, parallel, utils
from .batchnorm import (BatchNorm1d, BatchNorm2d, BatchNorm3d, freeze_batchnorm, name_norm_layers,
                        unfreeze_batchnorm)
from .batchrenorm import BatchRenorm1d, BatchRenorm2d
from .bn_tools import BNReport, bn_report, fold_bn, recalibrate_bn
from .conv import Conv2d
from .embedding import Embedding
from .ghost import GhostBatchNorm2d
from .interop import (batchnorm_from_flax, batchnorm_from_keras, batchnorm_to_flax, batchnorm_to_keras,
                      from_torch_state_dict, to_torch_state_dict)
from .layers import (GELU, CrossEntropyLoss, Dropout, Flatten, Identity, LeakyReLU, MSELoss, ReLU, SiLU, Sigmoid,
                     Softmax, Tanh)
from .linear import Linear
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .rmsnorm import RMSNorm
from .rownorm import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm
from .syncbn import SyncBatchNorm

__all__ = ["functional", "init", "parallel", "utils", "Module", "ModuleDict", "ModuleList", "Parameter", "Sequential", "Linear", "ReLU", "Identity",
           "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchRenorm1d", "BatchRenorm2d",
           "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm",
           "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten", "Dropout", "LeakyReLU", "GELU",
           "SiLU", "Sigmoid", "Tanh", "Softmax", "CrossEntropyLoss", "MSELoss", "Embedding", "SyncBatchNorm",
           "freeze_batchnorm", "unfreeze_batchnorm", "name_norm_layers"]
__all__ += ["GhostBatchNorm2d", "recalibrate_bn", "bn_report", "BNReport", "fold_bn", "from_torch_state_dict",
            "to_torch_state_dict", "batchnorm_from_keras", "batchnorm_to_keras", "batchnorm_from_flax",
            "batchnorm_to_flax"]
