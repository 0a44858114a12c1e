//! unfed-shard (being written).
