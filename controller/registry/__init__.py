"""The registry: datasets, models, versions, hashing and provenance."""
