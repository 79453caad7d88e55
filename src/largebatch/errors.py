"""The one base class for user mistakes: the CLI prints its message and exits with code 2."""


class UserError(ValueError):
    """Bad input from a user (config, files, arguments). The message must name the fix."""
