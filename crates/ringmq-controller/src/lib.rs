//! placeholder
pub mod state;
pub mod store;
