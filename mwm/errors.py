"""Errors a user can cause, reported as one line (exit status 2) by the entry points."""


class UserError(Exception):
    """A mistake the user can fix: bad flag, unknown env, unusable path, missing library.

    The message is one line that names the problem and says what to do. Entry points
    catch it, print ``error: <message>`` to stderr and exit with status 2.
    """
