"""Credentials and roles: API tokens (hashed at rest), optional OIDC bearer JWTs."""
