"""Domain errors raised by models/ and training/.

service/errors.py alone maps them to HTTP status codes. Each message says what
was expected and what arrived.
"""

from __future__ import annotations


class OcellusError(Exception):
    """Base class of every expected, user-facing error."""


class WeightsUnavailableError(OcellusError):
    """Pretrained weights are neither cached nor downloadable."""


class BackboneArgumentError(OcellusError, ValueError):
    """A backbone cannot do what it was asked: take an input of this size (too small, not
    whole patches), or train more stages than it has."""


class ExportError(OcellusError):
    """An export directory is missing, malformed, tampered with or mismatched."""


class ImageError(OcellusError):
    """Base class of errors about an uploaded image."""

    reason = "bad_image"


class ImageDecodeError(ImageError):
    """The bytes are empty, truncated or not an image."""

    reason = "bad_image"


class UnsupportedImageFormatError(ImageError):
    """The bytes are an image in a format Ocellus does not read."""

    reason = "unsupported"


class ImageTooLargeError(ImageError):
    """The upload exceeds the byte limit or the image exceeds the pixel limit."""

    reason = "too_large"


class ModelNotReadyError(OcellusError):
    """No model is loaded (yet) for the requested task or name."""


class TaskMismatchError(OcellusError):
    """A model of one task was asked to do another (classify vs detect)."""


class DatasetError(OcellusError):
    """A training or evaluation data set is missing or malformed."""


class CheckpointError(OcellusError):
    """A training checkpoint cannot be resumed by this run."""


class RegistryError(OcellusError):
    """A model registry folder, name or version is missing or malformed."""


class RegistryLockedError(RegistryError):
    """Another job holds the registry name's lock."""


class VersionRefusedError(RegistryError):
    """A registry version failed to load (bad hash, bad manifest, wrong task); the old serves."""


class ServiceOverloadedError(OcellusError):
    """The inference queue is full (or the service is stopping): retry after a pause."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InferenceTimeoutError(ServiceOverloadedError):
    """A request waited longer than the request timeout for its results."""


class ModelsLoadingError(ServiceOverloadedError):
    """The service is still loading its models (start-up): retry after a pause."""

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, retry_after=retry_after)
