"""One exception type for errors the user can fix.

The CLI prints a `SpungeError` as one line and exits with code 2; any other exception is a
bug and keeps its traceback.
"""


class SpungeError(Exception):
    """Bad input, missing file, wrong settings: something the user can fix."""
