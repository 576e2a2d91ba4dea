"""Error types, one per domain, so CLIs can print a clear message without a traceback."""


class OGPOError(Exception):
    """Base class: every error the project raises on purpose derives from it."""


class ConfigError(OGPOError, ValueError):
    """A config value or params key is missing, mistyped or out of range."""


class ShapeError(OGPOError, ValueError):
    """A tensor has the wrong shape or contains NaN/inf."""


class DemoFormatError(OGPOError):
    """A demonstration file is malformed (names the file, demo and key)."""


class CheckpointError(OGPOError):
    """A checkpoint is missing, corrupt or does not match the expected config."""


class TrainingError(OGPOError):
    """Training diverged (for example a NaN loss); the last good weights are kept."""


class EnvError(OGPOError):
    """An environment failed (unknown task, crashed worker, ...)."""


class StorageError(OGPOError):
    """Object storage is unreachable, unauthorized or the object is missing."""
