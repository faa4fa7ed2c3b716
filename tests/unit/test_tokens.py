"""Control-API tokens: scopes nest, secrets are stored only hashed, and authentication
refuses malformed, unknown, forged and revoked secrets."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.tokens import SCOPES, ApiToken, AuthenticationError, TokenError, authenticate, grants, hash_secret, new_token


@pytest.mark.parametrize(("held", "needed"), list(itertools.product(SCOPES, SCOPES)))
def test_write_includes_read_and_admin_includes_both(held: str, needed: str) -> None:
    order = {"read": 0, "write": 1, "admin": 2}
    assert grants(held, needed) == (order[held] >= order[needed])  # type: ignore[arg-type]


def test_a_new_token_keeps_only_the_hash_of_its_secret() -> None:
    token, secret = new_token("ci", "write", 1_700_000_000_000)
    assert secret.startswith(f"sluice_{token.token_id}_") and len(secret) == len("sluice_") + 12 + 1 + 43
    assert token.secret_sha256 == hash_secret(secret) and secret not in repr(token)
    assert "secret_sha256" not in token.public() and secret not in str(token.public())
    assert authenticate({token.token_id: token}, secret) == token


def test_two_tokens_never_share_a_secret() -> None:
    secrets = {new_token("n", "read", 0)[1] for _ in range(200)}
    assert len(secrets) == 200


def test_the_record_round_trips_through_the_avro_contract() -> None:
    serde = SingleObjectSerde(SchemaSet.bundled())
    token, _ = new_token("ops", "admin", 1_700_000_000_000)
    revoked = dataclasses.replace(token, revoked_at_ms=1_700_000_000_500)
    for t in (token, revoked):
        assert ApiToken.from_record(serde.decode(serde.encode("ApiToken", t.record()), "ApiToken").record) == t


def test_authentication_refuses_what_is_not_a_valid_token() -> None:
    token, secret = new_token("ci", "read", 0)
    other, other_secret = new_token("other", "read", 0)
    tokens = {token.token_id: token}
    forged = secret[:-1] + ("A" if secret[-1] != "A" else "B")  # the right id, a wrong random half
    for presented, reason in [("Bearer x", "looks like"), (other_secret, "unknown"), (forged, "unknown")]:
        with pytest.raises(AuthenticationError, match=reason):
            authenticate(tokens, presented)
    revoked = dataclasses.replace(token, revoked_at_ms=1)
    with pytest.raises(AuthenticationError, match=f"{token.token_id} was revoked"):
        authenticate({token.token_id: revoked}, secret)


@pytest.mark.parametrize(("name", "scope", "words"), [
    ("ci", "root", "scope must be one of read, write, admin, but 'root'"),
    ("  ", "read", "name must be 1 to 200 characters"),
    ("x" * 201, "read", "name must be 1 to 200 characters"),
])
def test_a_token_needs_a_known_scope_and_a_name(name: str, scope: str, words: str) -> None:
    with pytest.raises(TokenError, match=words):
        new_token(name, scope, 0)
