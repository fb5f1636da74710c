"""Errors that reach the user as one line from the CLI (no traceback)."""


class QuantizeError(Exception):
    """Something the user can fix: a bad path, an unknown variant, an unwritable folder."""
