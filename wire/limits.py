"""Bounds every layer checks the same way."""

AMOUNT_MAX_LIMIT = 10**15
"""The largest amount in minor units: exact in any JSON parser (below 2**53), and far below
what a bigint account total can hold."""
