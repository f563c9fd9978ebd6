class ConfigError(ValueError):
    """A config value a user gave (file or override) that bigtrain cannot run with."""
