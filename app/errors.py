"""Errors the service layer raises on purpose; the API maps each kind to one HTTP status."""

from __future__ import annotations


class NotFoundError(KeyError):
    """No such conversation turn, document or job; the message names it."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])
