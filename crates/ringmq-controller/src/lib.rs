//! placeholder
pub mod core;
pub mod node;
#[cfg(test)]
mod sim;
pub mod state;
pub mod store;
