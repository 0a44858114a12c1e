//! unfed-engine (being written).
