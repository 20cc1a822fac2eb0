"""``python -m lightning_ad.serve --ckpt_path C ...``: the same as ``lightning-ad serve``."""

import sys

from .server import serve_main

if __name__ == "__main__":  # LitServe spawns its workers: they import this module without running it
    serve_main(sys.argv[1:])
