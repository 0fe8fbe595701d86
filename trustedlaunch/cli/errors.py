"""How every `tl` command reports bad input (`ERROR: ...` on stderr, exit code 2), and az's exit codes:
0 success, 1 error (a refused request, a failed operation or verdict), 2 bad command-line input,
3 a resource that does not exist."""

from __future__ import annotations

import typer

FAILURE_EXIT_CODE = 1
BAD_INPUT_EXIT_CODE = 2
NOT_FOUND_EXIT_CODE = 3


def bad_input(message: str) -> typer.Exit:
    """Print `ERROR: message` on stderr (as az) and return the Exit to raise (exit code 2)."""
    typer.echo(f"ERROR: {message}", err=True)
    return typer.Exit(BAD_INPUT_EXIT_CODE)


def hex_option(flag: str, value: str) -> bytes:
    """The bytes of a hex command-line value; bad hex is bad input naming the flag."""
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise bad_input(f"{flag} must be hex, got {value!r}") from None
