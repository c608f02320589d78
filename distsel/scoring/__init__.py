"""Scoring steps: embeddings, similarity and the other per-document scores."""
