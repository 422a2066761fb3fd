"""Activation layers."""
from . import functional as F
from .module import Module


class ReLU(Module):
    def forward(self, input):
        return F.relu(input)


class Identity(Module):
    def forward(self, input):
        return input
