"""Typed exceptions: every bad input raises one of these with a one-line message."""


class FbiRefError(Exception):
    """Base class of every error fbi_ref raises on purpose."""


class ModelFileError(FbiRefError):
    """A weights file that cannot be read: not HDF5, truncated, or of an unknown layout."""


class ArchitectureError(FbiRefError):
    """Weights that do not fit the architecture (missing layer, wrong shape)."""


class UnsupportedLayerError(FbiRefError):
    """A layer type (or option) that fbi_ref does not implement."""


class ImageError(FbiRefError):
    """A file that is not a readable image, or one that is too large to decode safely."""


class InputError(FbiRefError, ValueError):
    """An input array or argument of the wrong shape, dtype or value."""


class DownloadError(FbiRefError):
    """A download that failed or whose checksum does not match."""


class RunError(FbiRefError):
    """A run that could not go on (a worker process died): what it completed is kept."""
