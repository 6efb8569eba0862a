"""edgecompress: a staged, reproducible model-compression pipeline for vision models."""

__version__ = "0.1.0"


class EdgecompressError(Exception):
    """An error the user can fix (bad params, missing file, corrupt checkpoint).

    Stage scripts print its message as one line and exit with status 2 instead of a traceback.
    """
