"""The one exception type for bad user input.

A `ConfigError` carries a single line that names the file or field and the fix. The CLI prints
it without a traceback and exits with code 2.
"""


class ConfigError(ValueError):
    """Bad user input: unknown names, malformed files, missing data, impossible budgets."""
