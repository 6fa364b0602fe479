"""Exceptions that services raise and every entry point (API, admin, tasks) understands."""

from __future__ import annotations


class ServiceConflict(Exception):
    """The change is not allowed in the current state; the API answers 409 with `code`."""

    def __init__(self, message: str, code: str = "conflict", **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.context = context


class AuthenticationRefused(Exception):
    """Credentials or tokens were refused; the API answers 401 with `code`."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
