"""A multilayer perceptron: (Linear -> norm -> ReLU) per hidden width, then a Linear classifier."""
from .. import nn
from .norms import has_shift, norm_layer


class MLP(nn.Sequential):
    """``MLP(in_features, num_classes, hidden=(256, 128), norm="bn", dropout=0.0)``.

    Input (N, ...) is flattened to (N, in_features) first, so images can be fed directly.
    The norm goes between the Linear and the activation, as in the Batch Norm paper.
    """

    def __init__(self, in_features, num_classes, hidden=(256, 128), norm="bn", dropout=0.0):
        layers, width = [nn.Flatten()], in_features
        for h in hidden:
            layers += [nn.Linear(width, h, bias=not has_shift(norm)), norm_layer(norm, h, spatial=False), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(layers)
