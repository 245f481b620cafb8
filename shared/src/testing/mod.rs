//! In-memory fakes of the ports and a demo OIDC issuer, for fast unit tests and the local runner.
//! Compiled only with the `test-util` feature (never into a function's release build).

pub mod demo_issuer;
mod fakes;

pub use fakes::*;
