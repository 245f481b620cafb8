//! What the exchange reads of an API Gateway HTTP API event (payload format 2.0), and the
//! response it writes back.
//!
//! `aws_lambda_events`' `ApiGatewayV2httpRequest` copies every member of every event into its
//! own string (account, API id, domain, stage, source IP, user agent, times, route keys...), and
//! the broker reads none of them: about two dozen allocations per request, dropped unread. This
//! type keeps the members `gateway::to_request` uses and skips the rest. Each kept member is read
//! as `aws_lambda_events` reads it (same names and aliases, same defaults, same refusals: a
//! header name or value HTTP does not allow, or a method that is not a token, makes the event
//! unreadable); `tests` hold the two to the same requests for the repository's events.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// An HTTP API event, as far as the broker reads it. Its `Debug` shows neither the body (a
/// token request's form holds the subject token) nor header values (`Authorization`), nor the
/// query string.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpApiEvent {
    #[serde(default, alias = "path")]
    pub raw_path: Option<String>,
    #[serde(default)]
    pub raw_query_string: Option<String>,
    #[serde(default, deserialize_with = "headers")]
    pub headers: HeaderMap,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub is_base64_encoded: bool,
    pub request_context: HttpApiContext,
}

impl fmt::Debug for HttpApiEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpApiEvent")
            .field("raw_path", &self.raw_path)
            .field(
                "raw_query_string_bytes",
                &self.raw_query_string.as_ref().map(String::len),
            )
            .field("header_names", &self.headers.keys().collect::<Vec<_>>())
            .field("body_bytes", &self.body.as_ref().map(String::len))
            .field("is_base64_encoded", &self.is_base64_encoded)
            .field("request_context", &self.request_context)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpApiContext {
    #[serde(default)]
    pub request_id: Option<String>,
    pub http: HttpDescription,
}

#[derive(Debug, Deserialize)]
pub struct HttpDescription {
    #[serde(deserialize_with = "method")]
    pub method: Method,
}

/// A method name; empty reads as GET (as `aws_lambda_events` reads it).
fn method<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Method, D::Error> {
    let name = Cow::<str>::deserialize(deserializer)?;
    if name.is_empty() {
        return Ok(Method::GET);
    }
    Method::from_bytes(name.as_bytes()).map_err(|_| de::Error::invalid_value(de::Unexpected::Str(&name), &"a method"))
}

/// Headers: `null` or absent is none; each value a string or a list of strings (each appended).
fn headers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HeaderMap, D::Error> {
    struct HeadersVisitor;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore<'a> {
        #[serde(borrow)]
        One(Cow<'a, str>),
        #[serde(borrow)]
        More(Vec<Cow<'a, str>>),
    }

    impl<'de> Visitor<'de> for HeadersVisitor {
        type Value = HeaderMap;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of header names to values")
        }

        fn visit_unit<E>(self) -> Result<HeaderMap, E> {
            Ok(HeaderMap::new())
        }

        fn visit_none<E>(self) -> Result<HeaderMap, E> {
            Ok(HeaderMap::new())
        }

        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<HeaderMap, D::Error> {
            deserializer.deserialize_map(self)
        }

        fn visit_map<M: MapAccess<'de>>(self, mut access: M) -> Result<HeaderMap, M::Error> {
            let mut map = HeaderMap::with_capacity(access.size_hint().unwrap_or(0));
            while let Some((name, values)) = access.next_entry::<Cow<'de, str>, OneOrMore<'de>>()? {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| de::Error::invalid_value(de::Unexpected::Str(&name), &"a header name"))?;
                let value = |text: &str| {
                    HeaderValue::from_str(text)
                        .map_err(|_| de::Error::invalid_value(de::Unexpected::Str(text), &"a header value"))
                };
                match values {
                    OneOrMore::One(text) => {
                        map.insert(name, value(&text)?);
                    }
                    OneOrMore::More(texts) => {
                        for text in texts {
                            map.append(&name, value(&text)?);
                        }
                    }
                }
            }
            Ok(map)
        }
    }

    deserializer.deserialize_option(HeadersVisitor)
}

/// The response API Gateway reads (payload format 2.0), written once as JSON text: what
/// `aws_lambda_events`' `ApiGatewayV2httpResponse` serializes to (`statusCode`, `headers`,
/// `multiValueHeaders` empty, `body` when there is one, `isBase64Encoded`, `cookies` empty),
/// without passing the body (a token, a secret) through serde_json's byte-at-a-time escaping.
/// A header with several values is written once, its values joined by `, `. Its `Debug` shows
/// the status only: the body is a credential.
pub struct HttpApiResponse {
    status_code: u16,
    /// `None`: our JSON did not read back as JSON (the tests show it always does); the response
    /// is then `UNWRITABLE`, a 500 with no body.
    json: Option<Box<serde_json::value::RawValue>>,
}

/// The response written when the one built is not JSON.
const UNWRITABLE: &str =
    r#"{"statusCode":500,"headers":{},"multiValueHeaders":{},"isBase64Encoded":false,"cookies":[]}"#;

impl HttpApiResponse {
    pub fn new(status_code: u16, headers: &HeaderMap, body: Option<(&str, bool)>) -> Self {
        use crate::json_text::push_str;
        use std::fmt::Write;
        let mut json = String::with_capacity(256 + body.map_or(0, |(text, _)| text.len() + text.len() / 16));
        let _ = write!(json, r#"{{"statusCode":{status_code},"headers":{{"#);
        for (index, name) in headers.keys().enumerate() {
            if index > 0 {
                json.push(',');
            }
            push_str(&mut json, name.as_str());
            json.push(':');
            let values = headers.get_all(name);
            match values.iter().next().map(|v| v.to_str()) {
                Some(Ok(value)) if values.iter().nth(1).is_none() => push_str(&mut json, value),
                _ => {
                    let lossy: Vec<_> = values.iter().map(|v| String::from_utf8_lossy(v.as_bytes())).collect();
                    push_str(&mut json, &lossy.join(", "));
                }
            }
        }
        json.push_str(r#"},"multiValueHeaders":{}"#);
        if let Some((text, _)) = body {
            json.push_str(r#","body":"#);
            push_str(&mut json, text);
        }
        let base64 = body.is_some_and(|(_, base64)| base64);
        json.push_str(if base64 {
            r#","isBase64Encoded":true,"cookies":[]}"#
        } else {
            r#","isBase64Encoded":false,"cookies":[]}"#
        });
        // Checked as JSON once more by serde_json (a scan, no escaping); written as it is.
        match serde_json::value::RawValue::from_string(json) {
            Ok(json) => Self {
                status_code,
                json: Some(json),
            },
            Err(_) => Self {
                status_code: 500,
                json: None,
            },
        }
    }

    pub fn status_code(&self) -> u16 {
        self.status_code
    }

    /// The JSON API Gateway receives.
    pub fn json(&self) -> &str {
        self.json
            .as_deref()
            .map_or(UNWRITABLE, serde_json::value::RawValue::get)
    }
}

impl serde::Serialize for HttpApiResponse {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let json: &serde_json::value::RawValue = match &self.json {
            Some(json) => json,
            None => serde_json::from_str(UNWRITABLE).map_err(serde::ser::Error::custom)?,
        };
        json.serialize(serializer)
    }
}

impl fmt::Debug for HttpApiResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpApiResponse")
            .field("status_code", &self.status_code)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequest;
    use serde_json::{Value, json};

    /// The members `to_request` uses, as `aws_lambda_events` reads them and as this type does.
    fn both(event: &Value) -> (Option<String>, Option<String>) {
        let typed = serde_json::from_value::<ApiGatewayV2httpRequest>(event.clone());
        let lean = serde_json::from_value::<HttpApiEvent>(event.clone());
        match (typed, lean) {
            (Ok(typed), Ok(lean)) => {
                assert_eq!(typed.raw_path, lean.raw_path, "{event}");
                assert_eq!(typed.raw_query_string, lean.raw_query_string);
                assert_eq!(typed.headers, lean.headers, "{event}");
                assert_eq!(typed.body, lean.body);
                assert_eq!(typed.is_base64_encoded, lean.is_base64_encoded);
                assert_eq!(typed.request_context.request_id, lean.request_context.request_id);
                assert_eq!(typed.request_context.http.method, lean.request_context.http.method);
                (None, None)
            }
            (typed, lean) => (typed.err().map(|e| e.to_string()), lean.err().map(|e| e.to_string())),
        }
    }

    #[test]
    fn debug_shows_neither_the_body_nor_header_values_nor_the_query() {
        let mut event: Value =
            serde_json::from_str(include_str!("../../../events/exchange-token-request.json")).unwrap();
        event["headers"]["authorization"] = json!("Bearer secret-bearer-token");
        event["rawQueryString"] = json!("token=secret-query-token");
        let body = event["body"].as_str().unwrap().to_string();
        let printed = format!("{:?}", serde_json::from_value::<HttpApiEvent>(event).unwrap());
        assert!(
            printed.contains("authorization") && printed.contains("/token"),
            "{printed}"
        );
        for secret in ["secret-bearer-token", "secret-query-token", &body[..40]] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn reads_the_repository_events_as_aws_lambda_events_does() {
        for text in [
            include_str!("../../../events/exchange-token-request.json"),
            include_str!("../../../events/exchange-jwks-request.json"),
        ] {
            let event: Value = serde_json::from_str(text).unwrap();
            assert_eq!(both(&event), (None, None));
        }
    }

    #[test]
    fn reads_every_shape_of_header_method_and_absence_as_aws_lambda_events_does() {
        let base: Value = serde_json::from_str(include_str!("../../../events/exchange-token-request.json")).unwrap();
        let with = |path: &[&str], value: Value| {
            let mut event = base.clone();
            let mut at = &mut event;
            for key in &path[..path.len() - 1] {
                at = &mut at[*key];
            }
            match value {
                Value::Null if path == ["headers"] || path == ["body"] => at[path[path.len() - 1]] = Value::Null,
                Value::Null => {
                    at.as_object_mut().unwrap().remove(path[path.len() - 1]);
                }
                other => at[path[path.len() - 1]] = other,
            }
            event
        };
        let readable = [
            with(
                &["headers"],
                json!({"X-Many": ["a", "B"], "Authorization": "Bearer eyJ.AbC", "content-type": "application/json"}),
            ),
            with(&["headers"], Value::Null),
            with(&["headers"], json!({})),
            with(&["body"], Value::Null),
            with(&["rawPath"], Value::Null),
            with(&["isBase64Encoded"], Value::Null),
            with(&["requestContext", "requestId"], Value::Null),
            with(&["requestContext", "http", "method"], json!("")),
            with(&["requestContext", "http", "method"], json!("PATCH")),
            with(&["rawQueryString"], json!("a=1&b=%20")),
        ];
        for event in readable {
            assert_eq!(both(&event), (None, None), "{event}");
        }
        let mut moved_path = with(&["rawPath"], Value::Null);
        moved_path["path"] = json!("/token");
        assert_eq!(both(&moved_path), (None, None));
        // What `aws_lambda_events` refuses, this refuses.
        let unreadable = [
            with(&["headers"], json!({"bad name": "x"})),
            with(&["headers"], json!({"x": "line\nbreak"})),
            with(&["headers"], json!({"x": 1})),
            with(&["headers"], json!(["x"])),
            with(&["requestContext", "http", "method"], json!("GE T")),
            with(&["requestContext", "http"], Value::Null),
            with(&["requestContext"], Value::Null),
            with(&["body"], json!(1)),
        ];
        for event in unreadable {
            let (typed, lean) = both(&event);
            assert!(typed.is_some() && lean.is_some(), "{event}: {typed:?} / {lean:?}");
        }
    }

    #[test]
    fn a_response_that_is_not_json_is_written_as_a_500_without_a_body() {
        let unwritable = HttpApiResponse {
            status_code: 500,
            json: None,
        };
        assert_eq!(unwritable.json(), UNWRITABLE);
        assert_eq!(serde_json::to_string(&unwritable).unwrap(), UNWRITABLE);
        let read: lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse =
            serde_json::from_str(UNWRITABLE).unwrap();
        assert_eq!((read.status_code, read.body), (500, None));
    }
}
