"""Per-file outcomes a parser can report instead of crashing the run."""


class ParseError(Exception):
    """The file is of a supported kind but cannot be parsed (corrupt, encrypted, truncated...).
    `transient`: the cause is this machine, not the file (a tool that is not installed, a server
    that did not start): the file is retried by later syncs instead of waiting for new content."""

    def __init__(self, message: str = "", transient: bool = False):
        super().__init__(message)
        self.transient = transient

    def __reduce__(self):  # keep `transient` across the parse worker's pipe
        return (type(self), (str(self), self.transient))


class SkipFile(Exception):
    """The file is deliberately not indexed (unsupported type, empty...); the reason is documented."""
