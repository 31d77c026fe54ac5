"""One day of a stage: core functions joined to edges (etl, retrain, score, monitoring)."""
