"""``cnnlab serve``: a local web lab over the library. Pages in plain HTML and JavaScript modules
(``lab/static``), their JSON endpoints here, served by Starlette on uvicorn, offline.

- ``app.py``: the application put together: pages, every module's routes, the guard (Host and Origin checks)
- ``web.py``: what every endpoint shares: ``api`` (JSON in and out, errors as one sentence), ``LabError``,
  query and body parsing with bounds, background jobs
- ``sources.py``: what the lab can open (run folders under ``--runs``, torchvision weights, untrained models),
  each named by an id from the server's own listing, and an LRU cache of the opened models
- ``zoo.py``, ``graph.py``: the zoo, a model's per-layer table and its network graph
- ``playground.py``: conv arithmetic, as ``cnnlab calc``; the receptive-field page's endpoints
- ``explorer.py``: predictions, feature maps, filters, saliency, Grad-CAM, top-9 jobs
- ``images.py``: uploads, decoded only as images, bounded; ``pictures.py``: arrays as small PNGs, fast
- ``digits.py``: draw a digit, preprocessed as MNIST was
"""

from __future__ import annotations

from cnnlab.lab.app import create_app, serve

__all__ = ["create_app", "serve"]
