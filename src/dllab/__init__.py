"""dllab: run, reproduce and report a course's worth of deep-learning experiments."""

__version__ = "0.1.0"


class DllabError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""
