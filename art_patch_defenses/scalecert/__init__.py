"""ScaleCert (NeurIPS 2021): filled by issue 7; empty until then."""
