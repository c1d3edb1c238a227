"""Example pipelines declared on the public API, with their demo-data generators."""
