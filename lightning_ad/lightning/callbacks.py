"""The callbacks that put ``test`` and ``predict`` results on disk, under their former common name.

They live in one module per job; import from those:

* ``lightning_ad.lightning.prediction_writer``: :class:`PredictionWriter` (``predict``);
* ``lightning_ad.lightning.test_report``: :class:`TestReport` (``test``);
* ``lightning_ad.lightning.outputs``: safe output names and atomic writes.

This module stays for configurations and code that name ``lightning_ad.lightning.callbacks.PredictionWriter``
or ``...TestReport`` (class paths in YAML files included), and for the API reference pages.
"""

from __future__ import annotations

from .outputs import atomic_write, sanitize_relpath, save_map_tiff, save_png
from .prediction_writer import CSV_COLUMNS, PREDICTIONS_CSV, PredictionWriter
from .test_report import TEST_CSV, TEST_CSV_COLUMNS, TestReport

__all__ = [
    "PredictionWriter",
    "TestReport",
    "sanitize_relpath",
    "atomic_write",
    "save_map_tiff",
    "save_png",
    "CSV_COLUMNS",
    "PREDICTIONS_CSV",
    "TEST_CSV",
    "TEST_CSV_COLUMNS",
]
