"""Thin entry points that ``ray job submit`` runs."""
