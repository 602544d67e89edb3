"""The layers of a classic CNN in NumPy, each with ``forward`` and ``backward``.

Conventions, chosen to match PyTorch so that every array can be compared one to one:

- activations are NCHW; a conv weight is (out_channels, in_channels, kh, kw); a linear weight is (out, in);
- ``forward(x)`` keeps what ``backward`` needs; ``backward(grad)`` takes dL/d(output), fills ``layer.grads``
  (same keys as ``layer.params``) and returns dL/d(input);
- SGD with momentum follows torch.optim.SGD: v = momentum * v + (g + weight_decay * p); p -= lr * v.

The convolution is written twice: ``conv2d_direct`` is the lecture's formula as loops,

    out[n, f, i, j] = b[f] + sum_c sum_a sum_b  x_pad[n, c, i*s + a, j*s + b] * w[f, c, a, b]

and ``Conv2d`` (im2col) lays every receptive field out as a row of a matrix, so the whole layer is one matrix
product; its backward is two more products and a scatter-add (col2im), which is where weight sharing shows:
a weight's gradient is the sum over every position it touched.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnlab.errors import CnnlabError


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise CnnlabError(f"{name} must be a whole number or a pair of them, not {value!r}")
    return int(pair[0]), int(pair[1])


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def output_size(n: int, k: int, s: int, p: int, what: str = "kernel") -> int:
    """(n - k + 2p) // s + 1, or a CnnlabError when the window does not fit the padded input."""
    if k > n + 2 * p:
        raise CnnlabError(f"the {k}-wide {what} does not fit the {n}-wide input padded by {p} ({n + 2 * p}); "
                          f"use a smaller {what} or more padding")
    return (n + 2 * p - k) // s + 1


def _check4d(x: np.ndarray, layer: str, channels: int | None = None) -> None:
    if x.ndim != 4:
        raise CnnlabError(f"{layer} expects an N x C x H x W array, got shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        raise CnnlabError(f"{layer} expects {channels} input channels, got {x.shape[1]} (shape {x.shape})")


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """A view (N, C, Ho, Wo, kh, kw) of every window of an (already padded) N x C x H x W array."""
    return sliding_window_view(x, kernel, axis=(2, 3))[:, :, ::stride[0], ::stride[1]]


def _pad(x: np.ndarray, padding: tuple[int, int]) -> np.ndarray:
    if padding == (0, 0):
        return x
    return np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))


def im2col(x: np.ndarray, kernel, stride=1, padding=0) -> np.ndarray:
    """Image to columns: every receptive field of x (N x C x H x W) as one column of a (C*kh*kw, N*Ho*Wo) matrix.

    Rows are in (c, a, b) order, the order of ``weight.reshape(out_channels, -1)``, and columns in (n, i, j)
    order, so the whole convolution is one product: weight.reshape(F, -1) @ im2col(x) -> (F, N*Ho*Wo)."""
    kernel, stride, padding = _pair(kernel, "kernel"), _pair(stride, "stride"), _pair(padding, "padding")
    for axis in (0, 1):
        output_size(x.shape[2 + axis], kernel[axis], stride[axis], padding[axis])
    view = _windows(_pad(x, padding), kernel, stride)  # N C Ho Wo kh kw, a view: nothing copied yet
    n, c, ho, wo, kh, kw = view.shape
    return view.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * ho * wo)


def col2im(cols: np.ndarray, x_shape, kernel, stride=1, padding=0) -> np.ndarray:
    """The adjoint of im2col: every column's entries added back to the input positions they were read from, so
    a pixel that several receptive fields share collects the sum of their gradients."""
    kernel, stride, padding = _pair(kernel, "kernel"), _pair(stride, "stride"), _pair(padding, "padding")
    n, c, h, w = x_shape
    ho, wo = (output_size(h, kernel[0], stride[0], padding[0]), output_size(w, kernel[1], stride[1], padding[1]))
    blocks = cols.reshape(c, kernel[0], kernel[1], n, ho, wo)
    dx = np.zeros((c, n, h + 2 * padding[0], w + 2 * padding[1]), dtype=cols.dtype)  # C first: contiguous adds
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            dx[:, :, a:a + stride[0] * ho:stride[0], b:b + stride[1] * wo:stride[1]] += blocks[:, a, b]
    return dx[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w].transpose(1, 0, 2, 3)


def conv2d_direct(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, stride=1, padding=0) -> np.ndarray:
    """The lecture's formula, one output entry at a time: the sum over the kernel window, plus one bias per filter."""
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    n, _, h, wd = x.shape
    f, _, kh, kw = w.shape
    ho, wo = output_size(h, kh, sh, ph), output_size(wd, kw, sw, pw)
    xp = _pad(x, (ph, pw))
    out = np.zeros((n, f, ho, wo), dtype=np.result_type(x, w))
    for i_n in range(n):
        for i_f in range(f):
            for i in range(ho):
                for j in range(wo):
                    window = xp[i_n, :, i * sh:i * sh + kh, j * sw:j * sw + kw]  # C x kh x kw
                    out[i_n, i_f, i, j] = np.sum(window * w[i_f]) + (b[i_f] if b is not None else 0)
    return out


def conv2d_direct_backward(x, w, grad, stride=1, padding=0):
    """Loops again: each output entry hands grad * window to its filter's weights (shared, so they add up),
    grad * weights back to the input window it read, and grad to its filter's bias. Returns (dx, dw, db)."""
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    f, _, kh, kw = w.shape
    xp = _pad(x, (ph, pw))
    dxp, dw, db = np.zeros_like(xp), np.zeros_like(w), np.zeros(f, dtype=w.dtype)
    for i_n in range(grad.shape[0]):
        for i_f in range(f):
            for i in range(grad.shape[2]):
                for j in range(grad.shape[3]):
                    g = grad[i_n, i_f, i, j]
                    dw[i_f] += g * xp[i_n, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    dxp[i_n, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += g * w[i_f]
                    db[i_f] += g
    return dxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], dw, db


class Layer:
    """A layer: ``params`` and ``grads`` (same keys), ``forward`` and ``backward``."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Conv2d(Layer):
    """A convolution with any channels, kernel, stride, padding and an optional bias.

    ``method="im2col"`` (default) is the fast matrix-product version; ``method="direct"`` runs the loops of
    ``conv2d_direct``. Weights start He-normal (std sqrt(2 / fan_in)), biases at zero. ``input_grad=False``
    skips dL/dx (``backward`` returns None), for a first layer whose input is the data."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 method: str = "im2col", rng=None, dtype=np.float32, input_grad: bool = True):
        super().__init__()
        if method not in ("im2col", "direct"):
            raise CnnlabError(f"method must be 'im2col' or 'direct', not {method!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
        self.padding, self.method, self.input_grad = _pair(padding, "padding"), method, input_grad
        kh, kw = self.kernel_size
        std = np.sqrt(2.0 / (in_channels * kh * kw))
        self.params["weight"] = (_rng(rng).standard_normal((out_channels, in_channels, kh, kw)) * std).astype(dtype)
        if bias:
            self.params["bias"] = np.zeros(out_channels, dtype=dtype)

    def forward(self, x):
        _check4d(x, "Conv2d", self.in_channels)
        w, b = self.params["weight"], self.params.get("bias")
        self._x_shape = x.shape
        if self.method == "direct":
            self._x = x
            return conv2d_direct(x, w, b, self.stride, self.padding)
        n, _, h, wd = x.shape
        ho = output_size(h, self.kernel_size[0], self.stride[0], self.padding[0])
        wo = output_size(wd, self.kernel_size[1], self.stride[1], self.padding[1])
        self._cols = im2col(x, self.kernel_size, self.stride, self.padding)  # (C*kh*kw, N*Ho*Wo)
        y = w.reshape(self.out_channels, -1) @ self._cols  # (F, N*Ho*Wo)
        if b is not None:
            y += b[:, None]
        return np.ascontiguousarray(y.reshape(self.out_channels, n, ho, wo).transpose(1, 0, 2, 3))

    def backward(self, grad):
        w = self.params["weight"]
        if self.method == "direct":
            dx, dw, db = conv2d_direct_backward(self._x, w, grad, self.stride, self.padding)
        else:
            g = grad.transpose(1, 0, 2, 3).reshape(self.out_channels, -1)  # (F, N*Ho*Wo)
            dw = (g @ self._cols.T).reshape(w.shape)  # each weight: summed over every position it touched
            db = g.sum(axis=1)
            dx = None
            if self.input_grad:
                dx = col2im(w.reshape(self.out_channels, -1).T @ g, self._x_shape, self.kernel_size, self.stride,
                            self.padding)
        self.grads["weight"] = dw
        if "bias" in self.params:
            self.grads["bias"] = db
        return dx if self.input_grad else None

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={'bias' in self.params}, method={self.method!r})")


class _Pool(Layer):
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")

    def _view(self, x):
        _check4d(x, type(self).__name__)
        for axis in (0, 1):
            output_size(x.shape[2 + axis], self.kernel_size[axis], self.stride[axis], 0, "pooling window")
        self._x_shape = x.shape
        return _windows(x, self.kernel_size, self.stride)

    def _scatter(self, per_offset) -> np.ndarray:
        """Add per_offset(a, b) (N x C x Ho x Wo) to the input position at offset (a, b) of every window."""
        dx = None
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        for a in range(kh):
            for b in range(kw):
                part = per_offset(a, b)
                if dx is None:
                    dx = np.zeros(self._x_shape, dtype=part.dtype)
                ho, wo = part.shape[2:]
                dx[:, :, a:a + sh * ho:sh, b:b + sw * wo:sw] += part
        return dx

    def __repr__(self):
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride})"


class MaxPool2d(_Pool):
    """Max over each window; backward routes the gradient to the window's maximum (the first, on a tie).

    The max is taken offset by offset (kh*kw strided slices of the input), which is faster in NumPy than an
    argmax over a copy of every window."""

    def forward(self, x):
        view = self._view(x)
        ho, wo = view.shape[2:4]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        best = idx = None
        for k in range(kh * kw):
            a, b = divmod(k, kw)
            part = x[:, :, a:a + sh * ho:sh, b:b + sw * wo:sw]
            if best is None:
                best, idx = part.copy(), np.zeros(part.shape, dtype=np.int32)
            else:
                better = part > best
                np.copyto(best, part, where=better)
                np.copyto(idx, k, where=better)
        self._argmax = idx  # offset a*kw + b of each window's maximum
        return best

    def backward(self, grad):
        kw = self.kernel_size[1]
        return self._scatter(lambda a, b: np.where(self._argmax == a * kw + b, grad, 0).astype(grad.dtype))


class AvgPool2d(_Pool):
    """Mean over each window; backward hands every input of the window 1/(kh*kw) of the gradient."""

    def forward(self, x):
        return self._view(x).mean(axis=(-2, -1))

    def backward(self, grad):
        share = grad / (self.kernel_size[0] * self.kernel_size[1])
        return self._scatter(lambda a, b: share)


class GlobalAvgPool2d(Layer):
    """N x C x H x W -> N x C: the mean of each feature map (as in NiN and GoogLeNet)."""

    def forward(self, x):
        _check4d(x, "GlobalAvgPool2d")
        self._x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, grad):
        h, w = self._x_shape[2:]
        return np.broadcast_to(grad[:, :, None, None] / (h * w), self._x_shape).copy()


class ReLU(Layer):
    def forward(self, x):
        self._mask = x > 0
        return np.maximum(x, 0)

    def backward(self, grad):
        return grad * self._mask


class LeakyReLU(Layer):
    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        self._mask = x > 0
        return np.where(self._mask, x, self.negative_slope * x).astype(x.dtype)

    def backward(self, grad):
        return np.where(self._mask, grad, self.negative_slope * grad).astype(grad.dtype)

    def __repr__(self):
        return f"LeakyReLU({self.negative_slope})"


class Tanh(Layer):
    def forward(self, x):
        self._y = np.tanh(x)
        return self._y

    def backward(self, grad):
        return grad * (1 - self._y ** 2)


class Sigmoid(Layer):
    def forward(self, x):
        self._y = 0.5 * (1 + np.tanh(0.5 * x))  # 1 / (1 + e^-x) without overflow for large |x|
        return self._y

    def backward(self, grad):
        return grad * self._y * (1 - self._y)


class Linear(Layer):
    """y = x W^T + b with W of shape (out_features, in_features), as in torch.nn.Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        std = np.sqrt(2.0 / in_features)
        self.params["weight"] = (_rng(rng).standard_normal((out_features, in_features)) * std).astype(dtype)
        if bias:
            self.params["bias"] = np.zeros(out_features, dtype=dtype)

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise CnnlabError(f"Linear expects N x {self.in_features} inputs, got shape {x.shape}; "
                              "put a Flatten before it or fix in_features")
        self._x = x
        y = x @ self.params["weight"].T
        return y + self.params["bias"] if "bias" in self.params else y

    def backward(self, grad):
        self.grads["weight"] = grad.T @ self._x
        if "bias" in self.params:
            self.grads["bias"] = grad.sum(axis=0)
        return grad @ self.params["weight"]

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={'bias' in self.params})"


class Flatten(Layer):
    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad):
        return grad.reshape(self._shape)


class SoftmaxCrossEntropy:
    """The mean over the batch of -log softmax(logits)[label]; its gradient is (softmax - one_hot) / N."""

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise CnnlabError(f"expected N x K logits and N labels, got shapes {logits.shape} and {labels.shape}")
        shifted = logits - logits.max(axis=1, keepdims=True)  # the same softmax, without overflow
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        self._probs, self._labels = np.exp(log_probs), labels
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    __call__ = forward

    def backward(self, grad: float = 1.0) -> np.ndarray:
        d = self._probs.copy()
        d[np.arange(len(self._labels)), self._labels] -= 1
        return d * (grad / len(self._labels))


class Sequential(Layer):
    def __init__(self, *layers: Layer):
        super().__init__()
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad):
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
            if grad is None:  # a layer that needs no dL/d(input), e.g. the first conv on the data
                break
        return grad

    def parameters(self) -> list[tuple[Layer, str]]:
        """(layer, name) for every parameter: ``layer.params[name]`` and ``layer.grads[name]``."""
        out = []
        for layer in self.layers:
            out += layer.parameters() if isinstance(layer, Sequential) else [(layer, k) for k in layer.params]
        return out

    def num_parameters(self) -> int:
        return sum(layer.params[name].size for layer, name in self.parameters())

    def __repr__(self):
        return "Sequential(\n" + "".join(f"  {layer!r}\n" for layer in self.layers) + ")"


class SGD:
    """Stochastic gradient descent with momentum, as torch.optim.SGD: v = m v + (g + wd p); p -= lr v."""

    def __init__(self, parameters: list[tuple[Layer, str]], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        self.parameters, self.lr, self.momentum, self.weight_decay = list(parameters), lr, momentum, weight_decay
        self._velocity: dict[int, np.ndarray] = {}

    def step(self) -> None:
        for i, (layer, name) in enumerate(self.parameters):
            p, g = layer.params[name], layer.grads[name]
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                v = self._velocity.get(i)
                v = g.copy() if v is None else self.momentum * v + g
                self._velocity[i] = v
                g = v
            p -= (self.lr * g).astype(p.dtype)  # in place: the layer keeps the same array


def pool_jacobian(x: np.ndarray, kernel_size, stride=None, op: str = "max") -> np.ndarray:
    """The lecture's pooling matrix for this input: vec(pool(x)) = A vec(x), and backprop is A^T vec(grad).

    x is H x W or any ... x H x W (vec is row-major over all axes; A is then block-diagonal, one block per map).
    Rows of A_maxpool are one-hot at the window's maximum (the first, on a tie); rows of A_avgpool hold
    1/(kh*kw) at every position of the window. A depends on x only for max pooling."""
    if op not in ("max", "avg"):
        raise CnnlabError(f"op must be 'max' or 'avg', not {op!r}")
    x = np.asarray(x)
    if x.ndim < 2:
        raise CnnlabError(f"pool_jacobian expects an H x W array (or ... x H x W), got shape {x.shape}")
    (kh, kw) = _pair(kernel_size, "kernel_size")
    (sh, sw) = (kh, kw) if stride is None else _pair(stride, "stride")
    h, w = x.shape[-2:]
    ho, wo = output_size(h, kh, sh, 0, "pooling window"), output_size(w, kw, sw, 0, "pooling window")
    maps = x.reshape(-1, h, w)
    a = np.zeros((len(maps) * ho * wo, len(maps) * h * w))
    for m, fmap in enumerate(maps):
        for i in range(ho):
            for j in range(wo):
                row = m * ho * wo + i * wo + j
                cols = [m * h * w + (i * sh + p) * w + (j * sw + q) for p in range(kh) for q in range(kw)]
                if op == "max":
                    window = fmap[i * sh:i * sh + kh, j * sw:j * sw + kw]
                    a[row, cols[int(np.argmax(window))]] = 1.0
                else:
                    a[row, cols] = 1.0 / (kh * kw)
    return a
