"""Moved to runtime/memory.py (builds measure their memory too); kept until the bench imports it from there."""

from runtime.memory import TreeRSSSampler

__all__ = ["TreeRSSSampler"]
