"""Errors the engine raises for an operator: the message says what failed and what to do."""


class HubError(Exception):
    """The work failed for a reason an operator can act on (CLI exit code 1)."""


class DatabaseNotReady(HubError):
    """The store is unreachable or its schema is not at the current migration."""
