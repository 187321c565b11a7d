"""Helpers shared by the tests: the real test environment and identities in it."""
