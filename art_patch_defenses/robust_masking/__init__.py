"""Robust masking (PatchGuard, USENIX Security 2021): filled by issue 5; empty until then."""
