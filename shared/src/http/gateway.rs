//! The exchange's Lambda entry point: API Gateway HTTP API events (payload format 2.0) in, their
//! responses out, through `BrokerApi::handle`.
//!
//! Not `lambda_http::run`: it reads every event twice (into a raw value, then tried against each
//! enabled event type) and passes every response body through encoding_rs's charset decoders
//! (all legacy encodings, ~150 kB of tables in the binary). The broker only ever answers UTF-8
//! JSON or an empty body, and only sits behind an HTTP API, so the event is read once into its
//! one type (`gateway_event::HttpApiEvent`: only the members the broker reads) and the response
//! is built directly.

use super::BrokerApi;
use super::gateway_event::{HttpApiEvent, HttpApiResponse};
use crate::error::BrokerError;
use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, Response};
use std::convert::Infallible;

/// Serves `api` until the Lambda runtime stops.
pub async fn run(api: &BrokerApi) -> Result<(), lambda_http::Error> {
    lambda_http::lambda_runtime::run(lambda_http::service_fn(
        move |event: lambda_http::LambdaEvent<HttpApiEvent>| async move {
            Ok::<_, Infallible>(handle_event(api, event.payload).await)
        },
    ))
    .await
}

/// One API Gateway event to its response (what the runtime serializes back to API Gateway).
pub async fn handle_event(api: &BrokerApi, event: HttpApiEvent) -> HttpApiResponse {
    let response = match to_request(event) {
        Ok(request) => api.handle(request).await,
        // Refused as `handle` refuses a request (`error_response` logs it), under the same id.
        Err(Unreadable {
            error,
            gateway_request_id,
        }) => {
            let request_id = super::request_id_or_new(gateway_request_id.as_deref());
            let mut response = super::error_response(&error, &request_id);
            super::set_request_id_header(&mut response, &request_id);
            response
        }
    };
    to_gateway_response(response)
}

/// An event that is not a readable request, with API Gateway's id for it.
#[derive(Debug)]
pub struct Unreadable {
    pub error: BrokerError,
    pub gateway_request_id: Option<String>,
}

/// The event as the request `BrokerApi::handle` reads: method, the raw path and query (the
/// template's `$default` stage adds no prefix), headers, the body (base64-decoded when the event
/// says so) and the request context (for API Gateway's request id). Not lambda_http's conversion:
/// it re-parses an absolute URL through the `url` crate (a fifth of the conversion's CPU) and
/// panics on a body that is not valid base64; here a malformed event is a 400, never a panic.
/// Cookies, path parameters and stage variables are not carried: the broker reads none.
pub fn to_request(mut event: HttpApiEvent) -> Result<Request, Unreadable> {
    let unreadable = |event: &mut HttpApiEvent| Unreadable {
        error: BrokerError::InvalidRequest("the request could not be read"),
        gateway_request_id: event.request_context.request_id.take(),
    };
    let path = event.raw_path.as_deref().filter(|p| p.starts_with('/')).unwrap_or("/");
    let uri = match event.raw_query_string.as_deref().filter(|q| !q.is_empty()) {
        Some(query) => http::Uri::try_from(format!("{path}?{query}")),
        None => http::Uri::try_from(path),
    };
    let Ok(uri) = uri else {
        return Err(unreadable(&mut event));
    };
    let body = match event.body.take() {
        None => Body::Empty,
        Some(body) if event.is_base64_encoded => match crate::b64::decode(&body) {
            Some(bytes) => Body::Binary(bytes),
            None => return Err(unreadable(&mut event)),
        },
        Some(body) => Body::Text(body),
    };
    let mut request = Request::new(body);
    *request.method_mut() = event.request_context.http.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = event.headers;
    // Where `BrokerApi` finds API Gateway's request id, as lambda_http would have put it.
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.request_id = event.request_context.request_id;
    context.http.method = event.request_context.http.method;
    request.extensions_mut().insert(RequestContext::ApiGatewayV2(context));
    Ok(request)
}

/// The HTTP API's response: headers as they are (the API sends none twice), a text body as
/// text, a binary one base64-encoded.
pub fn to_gateway_response(response: Response<Body>) -> HttpApiResponse {
    let (parts, body) = response.into_parts();
    let encoded;
    let body = match &body {
        Body::Empty => None,
        Body::Text(text) => Some((text.as_str(), false)),
        Body::Binary(bytes) => {
            encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes);
            Some((encoded.as_str(), true))
        }
        _ => None,
    };
    HttpApiResponse::new(parts.status.as_u16(), &parts.headers, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    const TOKEN_EVENT: &str = include_str!("../../../events/exchange-token-request.json");

    fn sample_event() -> HttpApiEvent {
        serde_json::from_str(TOKEN_EVENT).unwrap()
    }

    #[test]
    fn an_event_becomes_the_request_handle_reads() {
        let mut event = sample_event();
        event.raw_query_string = Some("a=1&b=%20".into());
        event.request_context.request_id = Some("gw-request-1".into());
        let body = event.body.clone().unwrap();
        let request = to_request(event).unwrap();
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri().path(), "/token");
        assert_eq!(request.uri().query(), Some("a=1&b=%20"));
        assert_eq!(request.headers()["content-type"], "application/x-www-form-urlencoded");
        match request.body() {
            Body::Binary(bytes) => assert_eq!(bytes, &crate::b64::decode(&body).unwrap()),
            other => panic!("a decoded body, not {other:?}"),
        }
        use lambda_http::RequestExt;
        match request.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(context)) => {
                assert_eq!(context.request_id.as_deref(), Some("gw-request-1"))
            }
            _ => panic!("the gateway's request context is carried"),
        }

        let mut plain = sample_event();
        plain.is_base64_encoded = false;
        plain.body = Some("grant_type=x".into());
        plain.raw_query_string = None;
        let request = to_request(plain).unwrap();
        assert!(matches!(request.body(), Body::Text(text) if text == "grant_type=x"));
        assert_eq!(request.uri().query(), None);
    }

    #[test]
    fn text_bodies_stay_text_binary_ones_are_base64_and_headers_pass_through() {
        let response = Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("content-type", "application/json")
            .header("retry-after", "1")
            .body(Body::Text(r#"{"error":"slow_down"}"#.into()))
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(to_gateway_response(response).json()).unwrap();
        assert_eq!(json["statusCode"], 429);
        assert_eq!(json["body"], r#"{"error":"slow_down"}"#);
        assert_eq!(json["isBase64Encoded"], false);
        assert_eq!(json["headers"]["content-type"], "application/json");
        assert_eq!(json["headers"]["retry-after"], "1");

        let binary = Response::new(Body::Binary(vec![0xff, 0x00]));
        let json: serde_json::Value = serde_json::from_str(to_gateway_response(binary).json()).unwrap();
        assert_eq!(json["body"], "/wA=");
        assert_eq!(json["isBase64Encoded"], true);

        let empty = Response::builder().status(StatusCode::OK).body(Body::Empty).unwrap();
        let json: serde_json::Value = serde_json::from_str(to_gateway_response(empty).json()).unwrap();
        assert_eq!(json["statusCode"], 200);
        assert!(json.get("body").is_none());
    }

    /// What `aws_lambda_events` writes for the same response (the shape the exchange returned
    /// before it wrote its own).
    fn as_aws_lambda_events_writes_it(
        status: u16,
        headers: &http::HeaderMap,
        body: Option<Body>,
        base64: bool,
    ) -> serde_json::Value {
        use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse;
        let mut gateway = ApiGatewayV2httpResponse::default();
        gateway.status_code = i64::from(status);
        gateway.headers = headers.clone();
        gateway.body = body;
        gateway.is_base64_encoded = base64;
        serde_json::to_value(gateway).unwrap()
    }

    #[test]
    fn responses_are_written_as_aws_lambda_events_writes_them_and_debug_hides_the_body() {
        let secret = "a \"secret\"\nwith \\ and \u{1} and é";
        let cases = [
            (
                StatusCode::OK,
                Body::Text(format!(r#"{{"access_token":"{}"}}"#, secret.escape_default())),
                false,
            ),
            (StatusCode::BAD_REQUEST, Body::Text(secret.into()), false),
            (StatusCode::OK, Body::Binary(vec![0, 1, 0xfe, 0xff]), true),
            (StatusCode::NO_CONTENT, Body::Empty, false),
        ];
        for (status, body, base64) in cases {
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("cache-control", "no-store")
                .header("x-request-id", "0193b7c2-\"quoted\"")
                .body(body.clone())
                .unwrap();
            let headers = response.headers().clone();
            let written = to_gateway_response(response);
            assert_eq!(written.status_code(), status.as_u16());
            let expected = match body {
                Body::Empty => as_aws_lambda_events_writes_it(status.as_u16(), &headers, None, false),
                body => as_aws_lambda_events_writes_it(status.as_u16(), &headers, Some(body), base64),
            };
            let actual: serde_json::Value = serde_json::from_str(written.json()).unwrap();
            assert_eq!(actual, expected);
            assert_eq!(serde_json::to_value(&written).unwrap(), expected, "serialized as it is");
            assert!(!format!("{written:?}").contains("secret"));
        }
    }

    #[test]
    fn a_header_with_several_values_is_written_once_with_its_values_joined() {
        let response = Response::builder()
            .header("vary", "origin")
            .header("vary", "accept")
            .body(Body::Empty)
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(to_gateway_response(response).json()).unwrap();
        assert_eq!(json["headers"]["vary"], "origin, accept");
    }
}
