"""Feature computation in DuckDB SQL (behaviour and popularity snapshots)."""
