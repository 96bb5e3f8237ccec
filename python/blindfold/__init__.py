"""blindfold: train on sealed data inside a trusted execution environment.

The Rust half (``blindfold._native``) attests to the data owner's key broker, receives
the dataset key, authenticates and decrypts records into memory it wipes, and seals the
trained model back to the owner. This package only hands those buffers to PyTorch:
see :mod:`blindfold.torch`.

Errors are raised by fault, all subclasses of :class:`BlindfoldError`:

- :class:`IntegrityError`: sealed data or a broker reply failed a check (tampering,
  truncation, a rollback). Do not retry.
- :class:`PolicyDenied`: the broker refused to release the key.
- :class:`BadInput`: the caller's arguments or files.
- :class:`StorageError`: storage, a local file or the network failed.
- :class:`InternalError`: a bug in blindfold.
"""

from ._native import (  # noqa: F401
    BadInput,
    BlindfoldError,
    IntegrityError,
    InternalError,
    PolicyDenied,
    StorageError,
)

__all__ = [
    "BadInput",
    "BlindfoldError",
    "IntegrityError",
    "InternalError",
    "PolicyDenied",
    "StorageError",
]
