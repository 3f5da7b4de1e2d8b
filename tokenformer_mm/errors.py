"""The library's one exception type for what a user gave it: ``InputError``.

A config value, a path, a file, data that cannot serve a run: the message names the value and
the fix, and a command line shows it as one line (``scripts/train.py``). Every other exception,
a ``ValueError`` from a bug included, keeps its traceback. ``InputError`` is a ``ValueError``,
so code that catches those catches it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class InputError(ValueError):
    """An input the library refuses; the message names it and what would be right."""


@contextmanager
def checking_inputs() -> Iterator[None]:
    """Code that only checks and prepares what the user gave (a run's config, its model, its
    data, before the first step): a ``ValueError`` raised in it is about those inputs."""
    try:
        yield
    except InputError:
        raise
    except ValueError as error:
        raise InputError(str(error)) from error
