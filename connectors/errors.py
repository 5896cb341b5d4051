"""The few exception classes connectors raise."""


class ConfigError(ValueError):
    """Bad or missing configuration; names the environment variable at fault."""


class StoreUnavailable(RuntimeError):
    """A store could not be reached or answered with a transient error."""
