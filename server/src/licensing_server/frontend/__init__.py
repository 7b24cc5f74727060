"""The public frontend process: users, tokens and the licensing.v1 API."""
