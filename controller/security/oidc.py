"""OIDC bearer JWTs verified against the issuer's JWKS (PyJWT; no hand-written JWT code)."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import jwt

from controller.errors import ServiceUnavailable, Unauthorized
from controller.security.principal import Principal, Role

_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]


class OidcVerifier:
    """Discovers the issuer's JWKS lazily and verifies signature, issuer, audience and expiry."""

    def __init__(self, issuer: str, audience: str | None, role_claim: str, default_role: str) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.role_claim = role_claim
        self.default_role = default_role
        self._jwks: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def _client(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._jwks is None:
                url = f"{self.issuer}/.well-known/openid-configuration"
                try:
                    conf = httpx.get(url, timeout=10).raise_for_status().json()
                except (httpx.HTTPError, ValueError) as exc:
                    raise ServiceUnavailable(
                        f"OIDC discovery at {url} failed: {exc}", backend="oidc"
                    ) from exc
                self._jwks = jwt.PyJWKClient(conf["jwks_uri"], cache_keys=True, lifespan=300)
            return self._jwks

    def _role(self, claims: dict[str, Any]) -> Role:
        value: Any = claims
        for part in self.role_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, list):  # e.g. a roles array: take the strongest we know
            for role in (Role.ADMIN, Role.OPERATOR, Role.DEVELOPER):
                if role.value in value:
                    return role
            value = None
        if value is None:
            if self.default_role == "none":
                raise Unauthorized(f"token has no '{self.role_claim}' claim")
            value = self.default_role
        if value not in (Role.ADMIN.value, Role.OPERATOR.value, Role.DEVELOPER.value):
            raise Unauthorized(f"role '{value}' in claim '{self.role_claim}' is not allowed for OIDC users")
        return Role(value)

    def _signing_key(self, token: str) -> jwt.PyJWK:
        """The JWKS key named by the token's ``kid``; a token without ``kid`` is accepted only when the
        issuer publishes exactly one signing key (some issuers omit ``kid``)."""
        client = self._client()
        if jwt.get_unverified_header(token).get("kid") is not None:
            return client.get_signing_key_from_jwt(token)
        keys = client.get_signing_keys()
        if len(keys) != 1:
            raise jwt.InvalidTokenError("token has no 'kid' and the issuer publishes several keys")
        return keys[0]

    def verify(self, token: str) -> Principal:
        """Verify the JWT and map it to a principal."""
        try:
            key = self._signing_key(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise ServiceUnavailable(f"OIDC JWKS unreachable: {exc}", backend="oidc") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid bearer token: {exc}") from exc
        options: Any = {"require": ["exp", "iss", "sub"], "verify_aud": self.audience is not None}
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=_ALGORITHMS,
                issuer=self.issuer,
                audience=self.audience,
                options=options,
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid bearer token: {exc}") from exc
        return Principal(subject=str(claims["sub"]), role=self._role(claims), via="oidc")
