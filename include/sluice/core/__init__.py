"""The pure core: contract engine, feature engine, training, gate, lineage. No I/O."""
