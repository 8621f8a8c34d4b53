"""User-facing errors: each carries one line that names the problem.

The CLI prints `error: <message>` and exits non-zero for any MoteError; anything else is a bug.
"""


class MoteError(Exception):
    """Base class: a problem with the user's input, not a bug in mote-edge."""

    exit_code = 1


class ConfigError(MoteError):
    """config.json is missing, malformed or inconsistent."""


class CheckpointError(MoteError):
    """A checkpoint directory is missing files or tensors, or a tensor has the wrong shape."""


class ImageError(MoteError):
    """An image file cannot be read or decoded."""


class TokenizerError(MoteError):
    """tokenizer.json cannot be loaded, or a prompt cannot be encoded."""


class FormatError(MoteError):
    """A .mote file is not one, is truncated or corrupt, or has an unsupported version."""


class CalibrationError(MoteError):
    """A calibration file cannot be read or holds no usable samples."""


class ExportError(MoteError):
    """The exporter cannot do what was asked (bad recipe, unsupported bits, ...)."""
