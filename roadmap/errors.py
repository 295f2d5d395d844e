"""The root of every error the harness reports as one line with exit code 2."""
from __future__ import annotations


class SpecError(ValueError):
    """An invalid value or combination; the message names it and the valid choices.

    Every error a user can cause (a bad flag, step file, data path, tracking URI, checkpoint) is a
    subclass, so that the command-line front ends print its one line and exit with code 2.
    """


class ServiceUnavailable(RuntimeError):
    """A service the harness needs (the tracking server) stayed unreachable for as long as it was waited for.

    Not a bad input: the front ends print its one line and exit with code 1, and the same command, run again
    once the service is back, resumes where it stopped.
    """
