"""Click plumbing shared by the front ends: one-line errors with exit code 2, lists and KEY=VALUE options."""
from __future__ import annotations

import sys

import click

from ..errors import ServiceUnavailable, SpecError


class OneLineErrors(click.Command):
    """A click command whose usage errors and SpecErrors print one line and exit with code 2."""

    def main(self, *args, **kwargs):  # noqa: ANN002, ANN003 - click's own signature
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as error:
            click.echo(f"error: {error.format_message()}", err=True)
            sys.exit(2 if isinstance(error, click.UsageError) else error.exit_code)
        except SpecError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except ServiceUnavailable as error:
            click.echo(f"error: {error}", err=True)  # it says to run the same command again
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


def parse_int_list(text: str, option: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; anything else is a one-line SpecError naming the option."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SpecError(f"{option}={text!r} is not valid; write whole numbers separated by commas, e.g. 0,1,2") \
            from None
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise SpecError(f"{option}={text!r} is not valid; write distinct whole numbers >= 0, e.g. 0,1,2")
    return values


def parse_key_values(items: tuple[str, ...], option: str) -> tuple[tuple[str, str], ...]:
    """('account=vision', 'qos=high') -> (('account', 'vision'), ('qos', 'high')); a malformed item is a SpecError."""
    pairs = []
    for item in items:
        key, separator, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not separator or not key or not value.strip():
            raise SpecError(f"{option}={item!r} is not valid; write KEY=VALUE, e.g. {option} account=vision")
        pairs.append((key, value.strip()))
    return tuple(pairs)
