"""Feature norm clipping (FNC, ICCV 2021): filled by issue 3; empty until then."""
