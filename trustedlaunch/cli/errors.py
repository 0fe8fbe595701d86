"""How every `tl` command reports bad input: one line on stderr and exit code 2."""

from __future__ import annotations

import typer

BAD_INPUT_EXIT_CODE = 2


def bad_input(message: str) -> typer.Exit:
    """Print `error: message` on stderr and return the Exit to raise (exit code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(BAD_INPUT_EXIT_CODE)


def hex_option(flag: str, value: str) -> bytes:
    """The bytes of a hex command-line value; bad hex is bad input naming the flag."""
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise bad_input(f"{flag} must be hex, got {value!r}") from None
