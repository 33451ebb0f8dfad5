"""Errors meant for the user: the message says what is wrong and what to do."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake in a config file or option; the message is meant for the user."""


class JobFailed(RuntimeError):
    """A job that could not finish for a reason the user can act on; the message says how."""
