"""`sluice tokens …`: create, list and revoke the control API's tokens."""

from __future__ import annotations

import json

import click

from sluice.cli._common import kafka_or_fail, settings, sluice_errors

PREFIX = click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix.")
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group()
def tokens() -> None:
    """Tokens of the control API (`sluice api`), stored hashed on the compacted tokens topic."""


@tokens.command()
@click.option("--name", required=True, help="Who or what the token is for.")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), required=True,
              help="read: GET; write: read and change experiments; admin: write and manage tokens.")
@PREFIX
@JSON
@sluice_errors
def create(name: str, scope: str, prefix: str, as_json: bool) -> None:
    """Create a token and print its secret: this once only, Sluice keeps just its hash."""
    from sluice.tokens import TokenRegistry

    bootstrap, security = kafka_or_fail(settings())
    with TokenRegistry(bootstrap, prefix, security=security) as registry:
        token, secret = registry.create(name, scope)
    if as_json:
        click.echo(json.dumps({**token.public(), "secret": secret}))
        return
    click.echo(f"created token {token.token_id} ({token.name}, {token.scope}); its secret, shown only now:", err=True)
    click.echo(secret)


@tokens.command("list")
@PREFIX
@JSON
@sluice_errors
def list_(prefix: str, as_json: bool) -> None:
    """Every token with its scope and state; never a secret or its hash."""
    from sluice.tokens import TokenRegistry

    bootstrap, security = kafka_or_fail(settings())
    with TokenRegistry(bootstrap, prefix, security=security) as registry:
        found = registry.all()
    if as_json:
        click.echo(json.dumps([t.public() for t in found]))
        return
    if not found:
        click.echo("no tokens")
    for t in found:
        click.echo(f"{t.token_id}  {t.scope:5}  {'revoked' if t.revoked else 'valid':7}  {t.name}")


@tokens.command()
@click.argument("token_id")
@PREFIX
@JSON
@sluice_errors
def revoke(token_id: str, prefix: str, as_json: bool) -> None:
    """Revoke TOKEN_ID: every API instance refuses it within a second."""
    from sluice.tokens import TokenRegistry

    bootstrap, security = kafka_or_fail(settings())
    with TokenRegistry(bootstrap, prefix, security=security) as registry:
        token = registry.revoke(token_id)
    click.echo(json.dumps(token.public()) if as_json else f"revoked token {token.token_id} ({token.name})")
