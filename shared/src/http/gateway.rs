//! The exchange's Lambda entry point: API Gateway HTTP API events (payload format 2.0) in, their
//! responses out, through `BrokerApi::handle`.
//!
//! Not `lambda_http::run`: it reads every event twice (into a raw value, then tried against each
//! enabled event type) and passes every response body through encoding_rs's charset decoders
//! (all legacy encodings, ~150 kB of tables in the binary). The broker only ever answers UTF-8
//! JSON or an empty body, and only sits behind an HTTP API, so the event is read once into its
//! one type and the response is built directly.

use super::BrokerApi;
use lambda_http::aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use lambda_http::request::LambdaRequest;
use lambda_http::{Body, Response};
use std::convert::Infallible;

/// Serves `api` until the Lambda runtime stops.
pub async fn run(api: &BrokerApi) -> Result<(), lambda_http::Error> {
    lambda_http::lambda_runtime::run(lambda_http::service_fn(
        move |event: lambda_http::LambdaEvent<ApiGatewayV2httpRequest>| async move {
            Ok::<_, Infallible>(handle_event(api, event.payload).await)
        },
    ))
    .await
}

/// One API Gateway event to its response (what the runtime serializes back to API Gateway).
pub async fn handle_event(api: &BrokerApi, event: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
    // lambda_http's own conversion (its `LambdaRequest` is doc-hidden in 1.3), so `handle` gets
    // the request, with its request context, that `lambda_http::run` would have given it.
    let request: lambda_http::Request = LambdaRequest::ApiGatewayV2(event).into();
    to_gateway_response(api.handle(request).await)
}

/// The HTTP API's response shape: headers as they are (the API sends none twice), a text body
/// as text, a binary one base64-encoded.
pub fn to_gateway_response(response: Response<Body>) -> ApiGatewayV2httpResponse {
    let (parts, body) = response.into_parts();
    let mut gateway = ApiGatewayV2httpResponse::default();
    gateway.status_code = i64::from(parts.status.as_u16());
    gateway.headers = parts.headers;
    (gateway.is_base64_encoded, gateway.body) = match body {
        Body::Empty => (false, None),
        text @ Body::Text(_) => (false, Some(text)),
        binary @ Body::Binary(_) => (true, Some(binary)),
        _ => (false, None),
    };
    gateway
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn text_bodies_stay_text_binary_ones_are_base64_and_headers_pass_through() {
        let response = Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("content-type", "application/json")
            .header("retry-after", "1")
            .body(Body::Text(r#"{"error":"slow_down"}"#.into()))
            .unwrap();
        let json = serde_json::to_value(to_gateway_response(response)).unwrap();
        assert_eq!(json["statusCode"], 429);
        assert_eq!(json["body"], r#"{"error":"slow_down"}"#);
        assert_eq!(json["isBase64Encoded"], false);
        assert_eq!(json["headers"]["content-type"], "application/json");
        assert_eq!(json["headers"]["retry-after"], "1");

        let binary = Response::new(Body::Binary(vec![0xff, 0x00]));
        let json = serde_json::to_value(to_gateway_response(binary)).unwrap();
        assert_eq!(json["body"], "/wA=");
        assert_eq!(json["isBase64Encoded"], true);

        let empty = Response::builder().status(StatusCode::OK).body(Body::Empty).unwrap();
        let json = serde_json::to_value(to_gateway_response(empty)).unwrap();
        assert_eq!(json["statusCode"], 200);
        assert!(json.get("body").is_none());
    }
}
