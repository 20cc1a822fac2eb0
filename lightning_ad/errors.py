"""Exceptions that carry a message meant for the user (the CLI prints them without a traceback)."""

from __future__ import annotations

__all__ = ["LightningADError", "DataError", "ImageDecodeError", "MaskError", "ConfigurationError", "CheckpointError", "NumericalError",
           "MissingPackageError"]


class LightningADError(Exception):
    """Base class: the message names the culprit (file or setting) and what to do."""


class DataError(LightningADError, ValueError):
    """A data folder or data setting is unusable."""


class ImageDecodeError(DataError):
    """A file with an image extension could not be decoded."""


class MaskError(DataError):
    """A mask is missing, does not fit its image, or contradicts the image's label."""


class ConfigurationError(LightningADError, ValueError):
    """A model or trainer setting cannot work."""


class CheckpointError(LightningADError, ValueError):
    """A checkpoint cannot be used with the configured model."""


class NumericalError(LightningADError, FloatingPointError):
    """NaN or infinite features or scores (caught before they reach metrics or outputs).

    A ``FloatingPointError`` as well, so code that catches that keeps working.
    """


class MissingPackageError(LightningADError, ImportError):
    """An optional package that the configuration needs is not installed (the message gives the pip command)."""
