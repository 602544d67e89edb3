"""Central finite differences: the gradient a layer's ``backward`` must agree with.

For a layer y = f(x; params) and a fixed upstream gradient G, the scalar L = sum(y * G) has dL/dy = G, so
``backward(G)`` must return dL/dx and fill dL/dparams; each entry is checked against
(L(v + eps) - L(v - eps)) / (2 eps). Use float64: in float32 the differences drown in rounding.
"""

from __future__ import annotations

import numpy as np


def numerical_gradient(f, a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f() / d a by central differences, perturbing a in place one entry at a time (a is restored)."""
    grad = np.zeros(a.shape, dtype=np.float64)
    flat = a.reshape(-1)  # a view: a must be contiguous
    assert np.shares_memory(flat, a), "numerical_gradient needs a contiguous array"
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        grad.reshape(-1)[i] = (plus - minus) / (2 * eps)
    return grad


def numerical_gradients(layer, x: np.ndarray, upstream: np.ndarray, eps: float = 1e-6):
    """(dL/dx, {name: dL/dparam}) for L = sum(layer.forward(x) * upstream), by central differences."""
    x = np.ascontiguousarray(x, dtype=np.float64)

    def loss():
        return float(np.sum(layer.forward(x) * upstream))

    return numerical_gradient(loss, x, eps), {k: numerical_gradient(loss, p, eps) for k, p in layer.params.items()}


def analytic_gradients(layer, x: np.ndarray, upstream: np.ndarray):
    """(dL/dx, {name: dL/dparam}) for the same L, from the layer's own forward and backward."""
    layer.forward(x)
    dx = layer.backward(upstream)
    return dx, {k: layer.grads[k] for k in layer.params}


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(max |a|, max |b|, 1e-8): about 1e-8 or less means the two agree in float64."""
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)), 1e-8)
    return float(np.max(np.abs(a - b), initial=0.0)) / scale
