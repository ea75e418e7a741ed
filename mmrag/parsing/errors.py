"""Per-file outcomes a parser can report instead of crashing the run."""


class ParseError(Exception):
    """The file is of a supported kind but cannot be parsed (corrupt, encrypted, truncated...)."""


class SkipFile(Exception):
    """The file is deliberately not indexed (unsupported type, empty...); the reason is documented."""
