"""PatchZero (WACV 2023): filled by issue 4; empty until then."""
