//! Volume-level metrics (see ARCHITECTURE.md).
