"""User-facing error types, raised at the boundaries (configs, data files, checkpoints) with messages
that name the file, row, field or path and the fix. Kept free of heavy imports so the CLI can catch
them without loading torch."""


class ConfigError(ValueError):
    """A configuration that cannot be used; raised before any work starts."""


class DataError(ValueError):
    """A data file that cannot be used; the message names file, row and field."""


class CheckpointError(ValueError):
    """A checkpoint directory or model spec that cannot be loaded; the message names the path and the fix."""
