"""``lightning-ad``: the console command, above every layer.

``fit``, ``validate``, ``test`` and ``predict`` are the Lightning CLI's (:func:`lightning_ad.lightning.cli.run_cli`);
``export`` and ``serve`` run a fitted checkpoint outside Lightning (:func:`lightning_ad.inference.export.export_main`,
:func:`lightning_ad.serve.serve_main`), so they never import the Lightning layer. A user-facing error
(:class:`~lightning_ad.errors.LightningADError`) is printed as one line, ``lightning-ad: error: ...``, without a
traceback, and the command exits with status 2 (``LIGHTNING_AD_DEBUG=1`` raises it instead).
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

from .errors import LightningADError

__all__ = ["main"]


def main(args: Optional[List[str]] = None) -> None:
    """Run ``lightning-ad ARGS`` (``args`` None: ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv[:1] == ["export"]:
            from .inference.export import export_main

            export_main(argv[1:])
        elif argv[:1] == ["serve"]:
            from .serve import serve_main

            serve_main(argv[1:])
        else:
            from .lightning.cli import run_cli

            run_cli(args)
    except LightningADError as err:
        if os.environ.get("LIGHTNING_AD_DEBUG"):
            raise
        message = str(err).strip().splitlines()[-1] if "Original Traceback" in str(err) else str(err)
        print(f"lightning-ad: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
