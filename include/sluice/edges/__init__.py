"""The outside world: the lake, object storage, the registry, sources, publishing, alerts."""
