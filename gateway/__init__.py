"""The public gateway (TLS, JWT auth, validation, rate limits, OpenAPI): built with issue 3."""
