"""A NumPy reference of the layers of a classic CNN, forward and backward, written to be read next to the lecture.

Nothing here imports PyTorch: every number is computed by NumPy in plain sight, and the tests check each layer
against central finite differences and against torch autograd (in float64).

- ``layers``: Conv2d (a direct loop that mirrors the formula, and a fast im2col version), MaxPool2d, AvgPool2d,
  GlobalAvgPool2d, ReLU, LeakyReLU, Tanh, Sigmoid, Linear, Flatten, SoftmaxCrossEntropy, Sequential, SGD.
- ``pool_jacobian``: pooling written as a matrix A, vec(output) = A vec(input), so backprop is A^T grad.
- ``gradcheck``: central finite differences for any layer.
- ``mnist`` / ``train``: a LeNet-style network trained on real MNIST with this engine alone.
- ``explain``: the worked examples printed by ``cnnlab explain``.

Layout is NCHW, as in PyTorch, so that weights and activations can be compared one to one.
"""

from cnnlab.scratch.gradcheck import numerical_gradients
from cnnlab.scratch.layers import (
    SGD,
    AvgPool2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
    col2im,
    conv2d_direct,
    conv2d_direct_backward,
    im2col,
    pool_jacobian,
)

__all__ = ["SGD", "AvgPool2d", "Conv2d", "Flatten", "GlobalAvgPool2d", "LeakyReLU", "Linear", "MaxPool2d", "ReLU",
           "Sequential", "Sigmoid", "SoftmaxCrossEntropy", "Tanh", "col2im", "conv2d_direct",
           "conv2d_direct_backward", "im2col", "numerical_gradients", "pool_jacobian"]
