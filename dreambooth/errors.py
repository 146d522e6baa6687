"""Errors for user mistakes. The CLI prints them as one line (no traceback) and exits non-zero."""


class DreamBoothError(ValueError):
    """A problem the user can fix; the message says what and how."""


class ConfigError(DreamBoothError):
    """An option or config file is wrong."""


class DataError(DreamBoothError):
    """An input folder or file is unusable."""


class ModelError(DreamBoothError):
    """A model folder is missing, incomplete or not loadable."""
