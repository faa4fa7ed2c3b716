"""Control-API tokens: scopes, secrets stored hashed, and the compacted tokens topic.

A token is `sluice_<token id>_<random half>`. The id is public (`sluice tokens list` shows
it, the audit log records it); the random half is 256 bits from the operating system's
generator and is shown once, when the token is created. Only the SHA-256 of the whole
secret is stored, on the compacted `api-tokens` topic, so every API instance follows the
same set and a revocation reaches all of them within a second.

Scopes are ordered: `write` includes `read`, `admin` includes both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, cast

from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.errors import SluiceError
from sluice.kafka.io import AvroProducer, read_to_end
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.kafka.topics import TopicNames

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")  # each grants every scope before it
TOKEN_PREFIX = "sluice"
MAX_NAME_LENGTH = 200
_SECRET = re.compile(rf"^{TOKEN_PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})$")


class TokenError(SluiceError):
    """A token request that cannot be done: the message names the token or the field."""


class AuthenticationError(TokenError):
    """The presented secret is not a valid token (malformed, unknown or revoked)."""


def grants(held: Scope, needed: Scope) -> bool:
    """True when a token of scope `held` may do what needs scope `needed`."""
    return SCOPES.index(held) >= SCOPES.index(needed)


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a token's secret: what the tokens topic stores instead of it.

    A plain, fast hash is enough here, unlike for passwords: the secret carries 256 random
    bits, so nobody can guess candidates to hash, and a slow hash (bcrypt, Argon2) would
    only cost every API request tens of milliseconds. Whoever reads the topic learns
    nothing that lets them call the API.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiToken:
    """A token as the topic keeps it: never the secret, only its hash."""

    token_id: str
    name: str
    scope: Scope
    secret_sha256: str
    created_at_ms: int
    revoked_at_ms: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at_ms is not None

    def matches(self, secret: str) -> bool:
        """Whether `secret` is this token's, compared in constant time (no timing hint)."""
        return hmac.compare_digest(hash_secret(secret), self.secret_sha256)

    def public(self) -> dict[str, Any]:
        """What may be shown to anyone who may list tokens: everything but the hash."""
        return {"token_id": self.token_id, "name": self.name, "scope": self.scope,
                "created_at_ms": self.created_at_ms, "revoked_at_ms": self.revoked_at_ms}

    def record(self) -> dict[str, Any]:
        """The `ApiToken` Avro record."""
        return {"token_id": self.token_id, "name": self.name, "scope": self.scope.upper(),
                "secret_sha256": self.secret_sha256, "created_at": self.created_at_ms,
                "revoked_at": self.revoked_at_ms}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ApiToken:
        return cls(record["token_id"], record["name"], cast(Scope, record["scope"].lower()), record["secret_sha256"],
                   record["created_at"], record["revoked_at"])


def new_token(name: str, scope: str, now_ms: int,
              random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> tuple[ApiToken, str]:
    """A new token named `name` with `scope`, and its secret (to show once, then forget)."""
    if scope not in SCOPES:
        raise TokenError(f"scope must be one of {', '.join(SCOPES)}, but {scope!r} is given")
    if not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise TokenError(f"name must be 1 to {MAX_NAME_LENGTH} characters, but {name!r} is given")
    token_id = random_bytes(6).hex()
    random_half = base64.urlsafe_b64encode(random_bytes(32)).decode().rstrip("=")
    secret = f"{TOKEN_PREFIX}_{token_id}_{random_half}"
    return ApiToken(token_id, name, cast(Scope, scope), hash_secret(secret), now_ms), secret


def authenticate(tokens: Mapping[str, ApiToken], secret: str) -> ApiToken:
    """The valid token whose secret `secret` is, from `tokens` by id; raises
    `AuthenticationError` saying whether it is malformed, unknown or revoked."""
    found = _SECRET.match(secret)
    if found is None:
        raise AuthenticationError(f"a token looks like {TOKEN_PREFIX}_<12 hex>_<43 characters>; this is not one")
    token = tokens.get(found.group(1))
    if token is None or not token.matches(secret):
        raise AuthenticationError("unknown token")
    if token.revoked:
        raise AuthenticationError(f"token {token.token_id} was revoked")
    return token


class TokenRegistry:
    """The tokens topic for `sluice tokens`: read once at open, every change confirmed."""

    def __init__(self, bootstrap: str, prefix: str = "sluice", serde: SingleObjectSerde | None = None, *,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        self.topic = TopicNames(prefix).api_tokens
        self._serde = serde or SingleObjectSerde(SchemaSet.bundled())
        self._producer = AvroProducer(bootstrap, self._serde, security=security)
        self._tokens: dict[str, ApiToken] = {}
        for msg in read_to_end(bootstrap, [self.topic], security=security):
            if msg.key is not None and msg.value is not None:
                self._tokens[msg.key.decode()] = ApiToken.from_record(self._serde.decode(msg.value, "ApiToken").record)

    def __enter__(self) -> TokenRegistry:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self._producer.close()

    def all(self) -> list[ApiToken]:
        """Every token ever created, revoked ones too, oldest first."""
        return sorted(self._tokens.values(), key=lambda t: (t.created_at_ms, t.token_id))

    def create(self, name: str, scope: str) -> tuple[ApiToken, str]:
        """Publish a new token; returns it and its secret, which exists nowhere else."""
        token, secret = new_token(name, scope, int(time.time() * 1000))
        self._publish(token)
        return token, secret

    def revoke(self, token_id: str) -> ApiToken:
        """Revoke `token_id` (again: nothing changes); every API refuses it from then on."""
        token = self._tokens.get(token_id)
        if token is None:
            known = ", ".join(sorted(self._tokens)) or "none"
            raise TokenError(f"no token {token_id!r} on {self.topic} (known: {known})")
        if token.revoked:
            return token
        revoked = ApiToken(token.token_id, token.name, token.scope, token.secret_sha256, token.created_at_ms,
                           int(time.time() * 1000))
        self._publish(revoked)
        return revoked

    def _publish(self, token: ApiToken) -> None:
        self._producer.send(self.topic, token.token_id.encode(), "ApiToken", token.record())
        self._producer.flush()
        self._tokens[token.token_id] = token
