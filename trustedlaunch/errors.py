"""Base error of the project: every error an operator may see derives from it."""


class TrustedLaunchError(Exception):
    """An error with a message written for the operator (what failed, where, and why)."""
