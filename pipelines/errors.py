"""The one error type for bad input: the command prints it on one line and exits with status 2."""


class InputError(Exception):
    """Bad input from the user: a missing file, a wrong config key or type, unreadable data.

    The message names the file or field, fits on one line and says what was expected.
    """

    exit_status = 2
