"""The allocator's exception hierarchy.

Every error the service raises on purpose derives from `AllocatorError`; the server maps
these to `{"exception": message}` replies. Modules define their own subclasses here or next
to the code that raises them, always deriving from one of these bases. Constructors take
facts (ids, sizes, names) and build a short lowercase message that names them.
"""

from __future__ import annotations


class AllocatorError(Exception):
    """Base of every error the allocator reports to a client or an operator.

    The message is safe to send over the wire: it names the facts, never internals.
    """


class ConfigError(AllocatorError):
    """The configuration file is invalid; the message names the key and the value.

    The caller keeps the configuration it had (on reload) or refuses to start.
    """


class RequestError(AllocatorError):
    """A client request is malformed or contradictory; nothing was changed."""


class StoreError(AllocatorError):
    """The database could not be reached or refused a change."""
