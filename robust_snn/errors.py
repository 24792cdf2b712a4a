"""User-facing error type: the CLI turns it into one clear line and a non-zero exit."""


class RobustSNNError(Exception):
    """A problem the user can fix (bad input, missing data, bad checkpoint)."""
