"""Masked World Models (Seo et al., CoRL 2022)."""
