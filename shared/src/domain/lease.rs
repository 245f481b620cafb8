//! What is released and taken back: leases, revocations and fences.

use super::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseStatus {
    Active,
    Revoked,
    Expired,
}

impl LeaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

/// One credential released to one subject: the unit of inventory, revocation and expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Also the `jti` of the broker JWT, so a token maps to its lease without an index.
    pub lease_id: String,
    pub kind: TargetKind,
    pub issuer: String,
    pub subject: String,
    pub grant_id: String,
    pub target: String,
    pub environment: String,
    pub scope: Vec<String>,
    /// Fingerprint of the subject token that was exchanged (never the token).
    pub subject_token_fingerprint: String,
    /// Signing key (`kid`) of the issued token; empty for non-JWT leases.
    pub key_id: String,
    /// For secret leases: the version released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_version: Option<String>,
    /// For AWS credential leases: the session's access key id (not secret; correlates CloudTrail).
    /// The session's `SourceIdentity` is the lease id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id: Option<String>,
    pub issued_at: UnixTime,
    pub expires_at: UnixTime,
    pub status: LeaseStatus,
    /// Destination holding a copy of what this lease released (from the grant's `delivers_to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// A standing block on new releases, checked inside every release transaction, so no cache of
/// any warm execution environment can outlive it. Raised by a subject revocation (lifted only by
/// an operator's unrevoke) or by disabling an issuer (lifted by enabling it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    Subject {
        issuer: String,
        subject: String,
    },
    Issuer(String),
    /// A revoked grant (never revived, so never lifted).
    Grant(String),
    /// A revoked secret (never re-enabled, so never lifted).
    Secret(String),
}

impl Fence {
    /// `<issuer>#<sub>`, as subject revocations name it; the issuer contains no `#` (OIDC issuers
    /// are URLs without fragments), the subject may.
    pub fn subject_from_id(id: &str) -> Option<Self> {
        let (issuer, subject) = id.split_once('#')?;
        (!issuer.is_empty() && !subject.is_empty()).then(|| Self::Subject {
            issuer: issuer.into(),
            subject: subject.into(),
        })
    }

    /// The fence a revocation raises, if it raises one: subjects, grants and secrets.
    pub fn for_revocation(target_kind: RevocationTarget, target_id: &str) -> Option<Self> {
        match target_kind {
            RevocationTarget::Subject => Self::subject_from_id(target_id),
            RevocationTarget::Grant => Some(Self::Grant(target_id.into())),
            RevocationTarget::Secret => Some(Self::Secret(target_id.into())),
            _ => None,
        }
    }

    /// The fence's identity in storage (see [`FenceRef::write_scope`]).
    pub fn scope(&self) -> String {
        let mut scope = String::new();
        self.as_ref().write_scope(&mut scope);
        scope
    }

    pub fn as_ref(&self) -> FenceRef<'_> {
        match self {
            Self::Subject { issuer, subject } => FenceRef::Subject { issuer, subject },
            Self::Issuer(issuer) => FenceRef::Issuer(issuer),
            Self::Grant(id) => FenceRef::Grant(id),
            Self::Secret(id) => FenceRef::Secret(id),
        }
    }
}

/// A fence named by borrowed parts: what a release checks, named from its lease's own fields
/// (every release checks three or four; owning copies of their names cost a copy each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceRef<'a> {
    Subject { issuer: &'a str, subject: &'a str },
    Issuer(&'a str),
    Grant(&'a str),
    Secret(&'a str),
}

impl FenceRef<'_> {
    /// Appends the fence's identity in storage: `subject#<iss>#<sub>`, `issuer#<iss>`,
    /// `grant#<id>` or `secret#<id>`. The one definition, for the revoker that raises a fence
    /// and every release that checks it.
    pub fn write_scope(&self, out: &mut String) {
        let (kind, first, second) = match *self {
            Self::Subject { issuer, subject } => ("subject#", issuer, Some(subject)),
            Self::Issuer(issuer) => ("issuer#", issuer, None),
            Self::Grant(id) => ("grant#", id, None),
            Self::Secret(id) => ("secret#", id, None),
        };
        out.push_str(kind);
        out.push_str(first);
        if let Some(second) = second {
            out.push('#');
            out.push_str(second);
        }
    }
}

/// What a revocation names; revoke-fanout finds every lease and copy derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationTarget {
    Lease,
    /// One version of a secret (`<secret id>#<version>`), e.g. a PREVIOUS version past its grace.
    SecretVersion,
    /// A whole secret: every version, every lease, every destination holding it.
    Secret,
    /// A grant (by id): it stops matching, and its leases go with it.
    Grant,
    /// A workload identity (`<issuer>#<sub>`): every lease it holds.
    Subject,
    /// A destination: told to drop what it holds, and never told anything again.
    Destination,
}

impl RevocationTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lease => "lease",
            Self::SecretVersion => "secret_version",
            Self::Secret => "secret",
            Self::Grant => "grant",
            Self::Subject => "subject",
            Self::Destination => "destination",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        [
            Self::Lease,
            Self::SecretVersion,
            Self::Secret,
            Self::Grant,
            Self::Subject,
            Self::Destination,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
    }
}

/// A revocation record: written once, propagated by revoke-fanout from the revocations stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub revocation_id: String,
    pub target_kind: RevocationTarget,
    pub target_id: String,
    /// Who revoked: `holder:<iss>#<sub>` for self-revocation, `operator:<name>` for operators.
    pub actor: String,
    pub reason: String,
    pub at: UnixTime,
}
