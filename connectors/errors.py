"""The exception class connectors share: configuration faults (each store module classifies its own transient errors)."""


class ConfigError(ValueError):
    """Bad or missing configuration; names the environment variable at fault."""
