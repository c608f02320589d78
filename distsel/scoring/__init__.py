"""Scoring stages: each module registers its stages (distsel.registry)."""
