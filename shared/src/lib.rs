//! nhi-broker core: domain, policy, tokens, ports and AWS adapters shared by the four functions.

pub mod audit;
pub mod aws;
pub mod broker_token;
pub mod cache;
pub mod config;
pub mod demo_issuer;
pub mod domain;
pub mod error;
pub mod exchange;
pub mod fakes;
pub mod fanout;
pub mod http_api;
pub mod jobs;
pub mod jwks;
pub mod policy;
pub mod ports;
pub mod redact;
pub mod rotation;
pub mod secevent;
pub mod subject_token;
pub mod sweeper;
pub mod telemetry;
pub mod token_admin;

pub use error::{BrokerError, Result};
