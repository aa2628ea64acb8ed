//! The registry protocol as regproxy needs to understand it.
//!
//! - [`route`]: OCI distribution paths as types, no I/O;
//! - [`skip`]: what skip mode does with each request, as pure decisions.

pub mod route;
pub mod skip;
