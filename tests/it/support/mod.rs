//! Helpers shared by the integration tests.

pub mod run_util;
pub mod shipped;
