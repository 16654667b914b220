"""API tokens: `mgw_<key id>_<secret>`, stored as a salted SHA-256 of the secret.

The key id is a lookup handle, not a secret; the secret has 256 bits of entropy, so one salted
SHA-256 is enough (a slow KDF defends guessable passwords, which these are not). Verification
compares digests in constant time. The plaintext is returned once, at creation, and never
stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from registry.db import Database
from registry.errors import Conflict, InvalidInput, NotFound
from registry.names import TOKEN_NAME
from registry.service import audit, iso
from registry.tables import ApiToken, utcnow

ROLES = ("app", "feedback", "analyst", "ops")
PREFIX = "mgw"


@dataclass(frozen=True)
class TokenRecord:
    key_id: str
    name: str
    role: str
    salt: str
    secret_hash: str
    revoked: bool


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_")
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 16 or not parts[2]:
        return None
    if len(parts[2]) > 128:
        return None
    return parts[1], parts[2]


def create_token(db: Database, role: str, name: str, actor: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
    if not TOKEN_NAME.fullmatch(name or ""):
        raise InvalidInput("token name must match [A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32).replace("_", "-")
    salt = secrets.token_hex(16)
    with db.session() as session:
        clash = session.scalar(
            select(ApiToken.id).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
        )
        if clash is not None:
            raise Conflict(f"an active token is already named {name!r}; revoke it or pick another")
        session.add(ApiToken(key_id=key_id, name=name, role=role, salt=salt,
                             secret_hash=_digest(salt, secret), created_by=actor))
        audit(session, actor, "token.create", detail={"name": name, "role": role,
                                                     "key_id": key_id})
    return f"{PREFIX}_{key_id}_{secret}"


def revoke_token(db: Database, name_or_key: str, actor: str) -> int:
    """Revoke the active token with this name or key id; returns how many were revoked."""
    with db.session() as session:
        rows = list(session.scalars(select(ApiToken).where(
            ApiToken.revoked_at.is_(None),
            (ApiToken.name == name_or_key) | (ApiToken.key_id == name_or_key),
        )))
        if not rows:
            raise NotFound(f"no active token named {name_or_key!r}")
        for row in rows:
            row.revoked_at = utcnow()
            audit(session, actor, "token.revoke", detail={"name": row.name, "key_id": row.key_id})
        return len(rows)


def list_tokens(db: Database) -> list[dict[str, object]]:
    with db.read() as session:
        return [
            {"name": t.name, "role": t.role, "key_id": t.key_id, "created_at": iso(t.created_at),
             "created_by": t.created_by, "revoked_at": iso(t.revoked_at)}
            for t in session.scalars(select(ApiToken).order_by(ApiToken.id))
        ]


def load_token(db: Database, key_id: str) -> TokenRecord | None:
    with db.read() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.key_id == key_id))
        if row is None:
            return None
        return TokenRecord(row.key_id, row.name, row.role, row.salt, row.secret_hash,
                           row.revoked_at is not None)


def load_tokens(db: Database, key_ids: list[str]) -> dict[str, TokenRecord]:
    """Several records in one query (the refresher of a worker's token cache)."""
    with db.read() as session:
        rows = session.scalars(select(ApiToken).where(ApiToken.key_id.in_(key_ids)))
        return {row.key_id: TokenRecord(row.key_id, row.name, row.role, row.salt,
                                        row.secret_hash, row.revoked_at is not None)
                for row in rows}


def secret_matches(record: TokenRecord, secret: str) -> bool:
    return hmac.compare_digest(_digest(record.salt, secret), record.secret_hash)
