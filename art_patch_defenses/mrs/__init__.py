"""Mask-guided randomized smoothing (MRS): filled by issue 6; empty until then."""
