"""``python -m lightning_ad``: the same as the ``lightning-ad`` command."""

from .command import main

if __name__ == "__main__":
    main()
