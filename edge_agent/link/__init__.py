"""The agent's link to the controller: HTTP with device-signed tokens, ETag polling with backoff."""
