"""`sluice demo` (what `make demo` runs)."""

from __future__ import annotations

import time

import click

from sluice.cli._common import settings, sigterm_unwinds, sluice_errors


@click.command()
@sluice_errors
def demo() -> None:
    """Start the stack, send a few serve and reward events through Kafka and ClickHouse,
    print them, and stop what was started."""
    from services import demo_foundation

    sigterm_unwinds()
    demo_foundation.run(settings(), now_ms=int(time.time() * 1000), echo=click.echo)
