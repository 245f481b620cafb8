//! nhi-broker core, one folder per flow:
//! - `exchange/`: the `/token` flow (subject tokens, issuer keys, policy, signing, introspection,
//!   self-revocation);
//! - `rotation/`: secret rotation and the signing-key ring;
//! - `fanout/`: revocation sweeps and deliveries to destinations;
//! - `sweeper/`: expiry of leases and approvals, unconfirmed deliveries;
//! - `http/`: the HTTP surface shared by the Lambda and the local runner; `https`: the one
//!   outbound connector (SDK, JWKS, hooks, SETs);
//! - `domain/`: the model and its rules (no I/O); `ports`: the traits the flows need;
//! - `aws/`: the adapters behind the ports; `wiring`: each function's composition root;
//! - `testing/` (feature `test-util`): in-memory fakes and the demo issuer.

pub mod audit;
pub mod aws;
pub mod b64;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod exchange;
pub mod export;
pub mod fanout;
pub mod http;
pub mod https;
pub mod jobs;
pub mod json_text;
pub mod ports;
pub mod redact;
pub mod rotation;
pub mod sweeper;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod wiring;

pub use error::{BrokerError, Result};
