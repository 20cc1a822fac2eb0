"""Serving a fitted checkpoint: a LitServe API around :class:`~lightning_ad.inference.detector.Detector` and an inspection page.

Needs the ``[serve]`` extra (``pip install -e ".[serve]"``). Start it with
``lightning-ad serve --ckpt_path C`` (or ``python -m lightning_ad.serve --ckpt_path C``); see
:mod:`lightning_ad.serve.server` for the endpoints, :mod:`lightning_ad.serve.payload` for
what a request may hold and the 4xx answers, :mod:`lightning_ad.serve.gate` and
:mod:`lightning_ad.serve.api` for where each check runs.
"""

from .payload import Limits, RequestError
from .server import build_server, serve_main

__all__ = ["serve_main", "build_server", "Limits", "RequestError"]
