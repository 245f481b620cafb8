//! An HTTP Lambda with the SDK the exchange needs and nothing else: aws-config, the KMS and
//! DynamoDB clients built at init, one GetItem and one KMS Sign per request (the exchange's warm
//! path in kind). Floor for the exchange's size, init and memory.

use lambda_http::{Body, Error, Request, Response, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let kms = aws_sdk_kms::Client::new(&sdk);
    let table = std::env::var("NHI_REGISTRY_TABLE").unwrap_or_default();
    let key_id = std::env::var("NHI_SIGNING_KEY_ID").unwrap_or_default();
    let (dynamo, kms, table, key_id) = (&dynamo, &kms, &table, &key_id);
    lambda_http::run(service_fn(move |_request: Request| async move {
        let item = dynamo
            .get_item()
            .table_name(table)
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("bench".into()))
            .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("bench".into()))
            .send()
            .await;
        let signature = kms
            .sign()
            .key_id(key_id)
            .message(aws_sdk_kms::primitives::Blob::new(b"header.payload".to_vec()))
            .message_type(aws_sdk_kms::types::MessageType::Raw)
            .signing_algorithm(aws_sdk_kms::types::SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await;
        let status = if item.is_ok() && signature.is_ok() { 200 } else { 502 };
        Ok::<_, Error>(Response::builder().status(status).body(Body::from("ok")).unwrap())
    }))
    .await
}
