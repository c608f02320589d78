"""The app layer: the driver by phase (ingest, scoring, selection, manifest), evaluation,
the report, status, the CLI and the public API. It may import every other layer."""
