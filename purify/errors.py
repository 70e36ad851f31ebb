"""Typed errors raised at purify's public boundary.

Each error subclasses the builtin a caller would naturally catch, so
``except ValueError`` and ``except TypeError`` keep working. Messages name the
function, the argument, what was expected, what came, and a hint.
"""

from __future__ import annotations

__all__ = [
    "PurifyError",
    "ShapeError",
    "RangeError",
    "DTypeError",
    "UnknownNameError",
    "ChecksumError",
    "DataNotFoundError",
    "NonDifferentiableError",
    "DeviceError",
    "RetrofitError",
]


class PurifyError(Exception):
    """Base class of every error purify raises on purpose."""


class ShapeError(PurifyError, ValueError):
    """An array or tensor has the wrong rank or size."""


class RangeError(PurifyError, ValueError):
    """A value lies outside its allowed range (NaN/Inf, pixels outside [0, 1], negative weights)."""


class DTypeError(PurifyError, TypeError):
    """An input has an unsupported type or dtype."""


class UnknownNameError(PurifyError, KeyError):
    """A registry lookup (purifier, model, dataset) got a name it does not know."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


class ChecksumError(PurifyError, ValueError):
    """A file's sha256 does not match the one it should have."""


class DataNotFoundError(PurifyError, FileNotFoundError):
    """A dataset or checkpoint file is not where it was looked for."""


class NonDifferentiableError(PurifyError, RuntimeError):
    """Backward was called through a stage that has no gradient (use ste=True or bpda())."""


class DeviceError(PurifyError, RuntimeError):
    """A device was asked for that this machine or torch build does not have (the message lists those it has).

    A ``RuntimeError``, like torch's own error for an unavailable device, so existing handlers keep working.
    """


class RetrofitError(PurifyError, ValueError):
    """A network cannot be retrofitted (no ReLU to replace, compiled code, a bad activation)."""
