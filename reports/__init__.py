"""Results store (JSON lines, pandas), merging across workers and shards, the HTML report."""
