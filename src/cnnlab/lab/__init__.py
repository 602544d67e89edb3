"""``cnnlab serve``: a local web lab over the library. Pages in plain HTML and JavaScript modules
(``lab/static``), their JSON endpoints here, served by Starlette on uvicorn, offline.

- ``app.py``: the application: pages, routes, errors as JSON, the security guard (Host and Origin checks)
- ``sources.py``: what the lab can open (run folders under ``--runs``, torchvision weights, untrained models),
  each named by an id from the server's own listing, and an LRU cache of the opened models
- ``zoo.py``, ``graph.py``: the zoo, a model's per-layer table and its network graph
- ``playground.py``: conv arithmetic, as ``cnnlab calc``; the receptive-field page's endpoints
- ``explorer.py``: predictions, feature maps, filters, saliency, Grad-CAM, top-9 jobs
- ``digits.py``: draw a digit, preprocessed as MNIST was
"""

from __future__ import annotations

from cnnlab.lab.app import create_app, serve

__all__ = ["create_app", "serve"]
