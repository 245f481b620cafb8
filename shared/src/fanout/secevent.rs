//! Telling destinations: Security Event Tokens (RFC 8417) pushed to webhooks as RFC 8935 describes,
//! or events put on an EventBridge bus. Events carry ids and versions, never secret values.

use crate::domain::{ChangeEvent, Destination, DestinationKind, UnixTime};
use crate::error::Result;
use crate::exchange::broker_token::sign_jwt;
use crate::ports::{Clock, Notifier, NotifyFailure, TokenSigner};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// JOSE `typ` of a SET (RFC 8417 section 2.3): never confusable with an access token.
pub const SET_TYP: &str = "secevent+jwt";
/// Event type URIs of the two changes a destination is told about.
pub const EVENT_CREDENTIAL_REVOKED: &str = "urn:nhi-broker:secevent:credential-revoked";
pub const EVENT_CREDENTIAL_ROTATED: &str = "urn:nhi-broker:secevent:credential-rotated";
/// EventBridge `source` of events the broker puts on destination buses.
pub const EVENT_SOURCE: &str = "nhi-broker";

#[derive(Debug, Serialize)]
struct SubjectId<'a> {
    format: &'static str,
    id: &'a str,
}

#[derive(Debug, Serialize)]
struct SetClaims<'a> {
    iss: &'a str,
    iat: UnixTime,
    jti: &'a str,
    aud: &'a str,
    /// Ties every SET about the same change together (RFC 8417 section 2.2).
    txn: &'a str,
    sub_id: SubjectId<'a>,
    events: Value,
}

/// The event type URI and its payload.
pub fn event_payload(event: &ChangeEvent) -> (&'static str, Value) {
    match event {
        ChangeEvent::Revoked {
            target_kind,
            target_id,
            reason,
            at,
            ..
        } => (
            EVENT_CREDENTIAL_REVOKED,
            json!({
                "target_kind": target_kind.as_str(),
                "target_id": target_id,
                "reason": reason,
                "event_timestamp": at,
            }),
        ),
        ChangeEvent::Rotated {
            secret_id,
            old_version,
            new_version,
            at,
            ..
        } => (
            EVENT_CREDENTIAL_ROTATED,
            json!({
                "secret_id": secret_id,
                "old_version": old_version,
                "new_version": new_version,
                "event_timestamp": at,
            }),
        ),
    }
}

/// Pushes SETs: `POST` with `Content-Type: application/secevent+jwt`; any 2xx acknowledges
/// (RFC 8935 says 202). No redirects, bounded time, the response body is never read.
pub struct WebhookPusher {
    http: crate::https::HttpsClient,
    signer: Arc<dyn TokenSigner>,
    clock: Arc<dyn Clock>,
    issuer: String,
}

impl WebhookPusher {
    pub fn new(signer: Arc<dyn TokenSigner>, clock: Arc<dyn Clock>, issuer: &str) -> Result<Self> {
        Ok(Self {
            // No redirects (crate::https), 10 s for the whole call.
            http: crate::https::HttpsClient::new(Duration::from_secs(10)),
            signer,
            clock,
            issuer: issuer.to_string(),
        })
    }

    /// The signed SET for one destination (`aud` = its URL).
    pub async fn sign(
        &self,
        url: &str,
        event: &ChangeEvent,
        jti: &str,
    ) -> Result<crate::exchange::broker_token::Signed> {
        let (uri, payload) = event_payload(event);
        let subject = event.subject();
        let claims = SetClaims {
            iss: &self.issuer,
            iat: self.clock.now(),
            jti,
            aud: url,
            txn: event.event_id(),
            sub_id: SubjectId {
                format: "opaque",
                id: &subject,
            },
            events: json!({ uri: payload }),
        };
        sign_jwt(self.signer.as_ref(), SET_TYP, &claims).await
    }

    pub async fn push(&self, url: &str, event: &ChangeEvent, jti: &str) -> std::result::Result<String, NotifyFailure> {
        if !crate::domain::is_allowed_url(url) {
            return Err(NotifyFailure("url_not_allowed".into()));
        }
        let set = self.sign(url, event, jti).await.map_err(|e| {
            tracing::error!(error = %e, "could not sign a security event token");
            NotifyFailure("signing_failed".into())
        })?;
        let response = self
            .http
            .post(
                url,
                &[
                    ("content-type", "application/secevent+jwt"),
                    ("accept", "application/json"),
                ],
                set.token.expose().as_bytes().to_vec(),
                0,
            )
            .await
            .map_err(|e| {
                NotifyFailure(
                    if e == crate::https::HttpsError::Timeout {
                        "timeout"
                    } else {
                        "unreachable"
                    }
                    .into(),
                )
            })?;
        if response.is_success() {
            Ok(format!("http_{}", response.status))
        } else {
            Err(NotifyFailure(format!("http_{}", response.status)))
        }
    }
}

/// Puts one event on an EventBridge bus; `Ok(event id)` only when the entry was accepted.
#[async_trait]
pub trait EventBus: Send + Sync {
    async fn put_event(
        &self,
        bus_arn: &str,
        detail_type: &str,
        detail: &str,
    ) -> std::result::Result<String, NotifyFailure>;
}

/// The production notifier: webhooks get SETs, buses get events.
pub struct DestinationNotifier {
    pub webhook: WebhookPusher,
    pub bus: Arc<dyn EventBus>,
}

/// `detail-type` of bus events.
pub fn detail_type(event: &ChangeEvent) -> &'static str {
    match event {
        ChangeEvent::Revoked { .. } => "Credential Revoked",
        ChangeEvent::Rotated { .. } => "Credential Rotated",
    }
}

#[async_trait]
impl Notifier for DestinationNotifier {
    async fn notify(
        &self,
        destination: &Destination,
        event: &ChangeEvent,
        jti: &str,
    ) -> std::result::Result<String, NotifyFailure> {
        match &destination.kind {
            DestinationKind::Webhook { url } => self.webhook.push(url, event, jti).await,
            DestinationKind::EventBridge { event_bus_arn } => {
                let (uri, payload) = event_payload(event);
                let detail = json!({
                    "jti": jti,
                    "txn": event.event_id(),
                    "destination_id": destination.id,
                    "sub_id": { "format": "opaque", "id": event.subject() },
                    "event_type": uri,
                    "event": payload,
                });
                self.bus
                    .put_event(event_bus_arn, detail_type(event), &detail.to_string())
                    .await
            }
        }
    }
}
