"""``python -m lightning_ad``: the same as the ``lightning-ad`` command."""

from .lightning.cli import main

if __name__ == "__main__":
    main()
