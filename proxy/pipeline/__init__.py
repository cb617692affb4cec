"""The request path: one pipeline for every API surface, and the context a request carries."""
