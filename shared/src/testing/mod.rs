//! In-memory fakes of the ports and a demo OIDC issuer, for fast unit tests and the local runner.
//! Compiled only with the `test-util` feature (never into a function's release build). Each fake
//! keeps the conditions its DynamoDB adapter enforces.

pub mod demo_issuer;
mod exchange;
mod fanout;
mod rotation;

pub use exchange::*;
pub use fanout::*;
pub use rotation::*;
