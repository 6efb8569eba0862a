"""edgecompress: a staged, reproducible model-compression pipeline for vision models."""

__version__ = "0.1.0"


class EdgecompressError(Exception):
    """An error the user can fix (bad params, missing file, corrupt checkpoint).

    Stage scripts print its message as one line and exit with status 2 instead of a traceback.
    """


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first message line (its type name when the message is empty), cut to `limit`:
    what a one-line user error quotes from a library's multi-line message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
