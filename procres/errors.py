"""The exceptions procres raises for what its caller got wrong.

``UserError`` is a ``ValueError`` (argument checks stay ``ValueError`` for library callers) that
marks the message as meant for a person: the command line prints it as one sentence and exits 1.
Any other exception reaching the command line is a bug in procres or its dependencies and keeps
its traceback.
"""

__all__ = ["UserError"]


class UserError(ValueError):
    """A bad argument, file or setting; the message names the value and what was expected."""
