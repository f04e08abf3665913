"""The one error type for bad input: the command prints it on one line and exits with status 2."""


class InputError(Exception):
    """Bad input from the user: a missing file, a wrong config key or type, unreadable data.

    The message names the file or field, fits on one line and says what was expected.
    """

    exit_status = 2


def check_writable_directory(uri: str, what: str) -> None:
    """A one-line InputError now, on the driver, when `uri` cannot be an output directory (a regular file is
    there, or nothing may be written there), instead of a traceback from a worker after Ray has started."""
    import uuid

    from electra_core import storage

    fs, path = storage.filesystem(uri)
    try:
        if fs.isfile(path):
            raise InputError(f"{uri}: {what} is a file, not a directory")
        probe = storage.join(uri, f".write-probe-{uuid.uuid4().hex[:8]}")
        storage.write_bytes(probe, b"")
        storage.delete(probe)
    except (PermissionError, NotADirectoryError, FileExistsError) as error:
        raise InputError(f"{uri}: {what} cannot be written ({type(error).__name__}: {error.strerror or error})") \
            from None
