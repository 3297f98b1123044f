"""The one base class of every error a user can cause and fix: the CLI and the app show its
message (which says what to change) instead of a traceback."""


class UserError(ValueError):
    pass
