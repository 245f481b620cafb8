//! The local runner's demo bootstrap against moto: a restart (even one that interrupted a
//! rotation of the demo secret) creates only what is missing and rewrites nothing.

use aws_sdk_dynamodb::types::AttributeValue;
use nhi_broker::aws::dynamo::Item;
use nhi_broker::aws::kms::KmsSecretCipher;
use nhi_broker::testing::demo_issuer::DemoIssuer;
use nhi_tests::rotation::secret_items;
use nhi_tests::{Harness, attr, now};
use std::collections::BTreeMap;

fn by_key(items: Vec<Item>) -> BTreeMap<String, Item> {
    items.into_iter().map(|i| (attr(&i, "sk").to_string(), i)).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_restart_after_an_interrupted_rotation_bootstraps_cleanly_and_rewrites_nothing() {
    let h = Harness::new().await;
    let sdk = nhi_broker::aws::sdk_config().await;
    let cipher = KmsSecretCipher::new(aws_sdk_kms::Client::new(&sdk), &h.config.secrets_key_id);
    let issuer = DemoIssuer::generate(&format!("http://127.0.0.1:1/{}", h.id)).unwrap();
    let jwks_url = format!("{}/jwks.json", issuer.issuer);
    let ledger = h.ledger();
    let bootstrap = |at: i64| {
        nhi_local::bootstrap_demo(
            &h.registry,
            &ledger,
            &h.config.registry_table,
            &cipher,
            &issuer,
            &jwks_url,
            at,
        )
    };

    let first = bootstrap(now()).await.expect("first start");
    assert!(
        first.iter().any(|c| c == &format!("issuer {}", issuer.issuer)),
        "{first:?}"
    );
    let secret = nhi_local::DEMO_SECRET;
    let before = by_key(secret_items(&h, secret).await);
    let head = &before["#SECRET"];
    assert!(head.contains_key("rotation"), "the demo secret rotates");
    assert!(
        !attr(head, "current_version").is_empty(),
        "and has a value from the start"
    );

    // Killed mid-rotation: a PENDING version staged, the step recorded.
    h.dynamo
        .update_item()
        .table_name(&h.config.registry_table)
        .key("pk", AttributeValue::S(format!("SECRET#{secret}")))
        .key("sk", AttributeValue::S("#SECRET".into()))
        .update_expression("SET pending_version = :v, rotation_step = :s")
        .expression_attribute_values(":v", AttributeValue::S("v-pending".into()))
        .expression_attribute_values(":s", AttributeValue::S("created".into()))
        .send()
        .await
        .unwrap();
    let interrupted = by_key(secret_items(&h, secret).await);

    // Started again, later: nothing to create, nothing rewritten.
    let second = bootstrap(now() + 60).await.expect("a restart bootstraps cleanly");
    assert_eq!(second, Vec::<String>::new());
    let after = by_key(secret_items(&h, secret).await);
    assert_eq!(
        after, interrupted,
        "the demo secret (policy, versions, rotation in progress) is untouched"
    );
    let versions = after.keys().filter(|k| k.starts_with("VERSION#")).count();
    assert_eq!(versions, 1, "no extra CURRENT version per start");
}
