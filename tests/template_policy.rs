//! template.yaml is part of the product: least privilege per function, checked here.

use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};

const TEMPLATE: &str = include_str!("../template.yaml");

/// What each function's code calls today. A grant beyond this fails the test: widen it only
/// together with the code that needs it.
fn expected_actions() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let logs = ["logs:CreateLogStream", "logs:PutLogEvents"];
    let set = |extra: &[&'static str]| logs.iter().chain(extra).copied().collect::<BTreeSet<_>>();
    BTreeMap::from([
        (
            "ExchangeRole",
            set(&[
                "dynamodb:Query",
                "dynamodb:GetItem",
                "dynamodb:ConditionCheckItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "kms:Sign",
                "kms:GetPublicKey",
                "kms:Decrypt",
                "sts:AssumeRole",
                "sts:TagSession",
                "sts:SetSourceIdentity",
            ]),
        ),
        (
            "RotateRole",
            set(&[
                "dynamodb:Query",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                // Writers encrypt; only exchange decrypts.
                "kms:Encrypt",
                // Envelope signing keys, made by KMS; rotate never sees a private key.
                "kms:GenerateDataKeyPairWithoutPlaintext",
                "kms:Sign",
                "kms:CreateKey",
            ]),
        ),
        (
            "RevokeFanoutRole",
            set(&[
                "dynamodb:DescribeStream",
                "dynamodb:GetRecords",
                "dynamodb:GetShardIterator",
                "dynamodb:ListStreams",
                "sqs:SendMessage",
                "dynamodb:Query",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                // Signs SETs; never decrypts or encrypts.
                "kms:Sign",
                "events:PutEvents",
                "iam:PutRolePolicy",
                "iam:DeleteRolePolicy",
            ]),
        ),
        (
            "ExpireSweeperRole",
            // No deletes: it only moves state forward. Its one KMS action certifies its audit
            // chains with the audit key (checked below to be the only key it may use).
            set(&["dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:PutItem", "kms:Sign"]),
        ),
        (
            "AuditExportRole",
            // Reads the audit stream, appends objects: never reads, deletes or overwrites policy.
            set(&[
                "dynamodb:DescribeStream",
                "dynamodb:GetRecords",
                "dynamodb:GetShardIterator",
                "dynamodb:ListStreams",
                "s3:PutObject",
            ]),
        ),
    ])
}

/// The roles of the functions that write audit events (each certifies its chains).
fn audit_writers() -> BTreeSet<String> {
    expected_actions()
        .keys()
        .filter(|role| **role != "AuditExportRole")
        .map(|r| r.to_string())
        .collect()
}

const CRYPTO_ACTIONS: &[&str] = &[
    "kms:Decrypt",
    "kms:Encrypt",
    "kms:ReEncrypt*",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
    "kms:GenerateDataKey*",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPair*",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:Sign",
    "kms:*",
    "*",
];

fn template() -> Value {
    serde_yaml_ng::from_str(TEMPLATE).expect("template.yaml parses")
}

fn resources(t: &Value) -> &serde_yaml_ng::Mapping {
    t["Resources"].as_mapping().unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => items.iter().flat_map(strings).collect(),
        _ => vec![],
    }
}

/// The logical id a `!GetAtt X.Arn` / `!Ref X` points at.
fn reference(v: &Value) -> Option<String> {
    match v {
        Value::Tagged(tagged) => tagged.value.as_str().map(|s| s.split('.').next().unwrap().to_string()),
        _ => None,
    }
}

/// A policy's statements, each with the template condition it exists under (`!If [C, statement,
/// !Ref AWS::NoValue]`), if any.
fn statements(list: &Value) -> Vec<(Value, Option<String>)> {
    list.as_sequence()
        .unwrap()
        .iter()
        .map(|st| match st {
            Value::Tagged(tagged) if tagged.tag == "If" => {
                let branches = tagged.value.as_sequence().expect("!If [condition, then, else]");
                assert_eq!(reference(&branches[2]).as_deref(), Some("AWS::NoValue"), "{st:?}");
                (branches[1].clone(), branches[0].as_str().map(String::from))
            }
            other => (other.clone(), None),
        })
        .collect()
}

/// (role logical id, statement) for every IAM statement attached to a role, inline or standalone.
fn role_statements(t: &Value) -> Vec<(String, Value)> {
    role_statements_with_conditions(t)
        .into_iter()
        .map(|(role, st, _)| (role, st))
        .collect()
}

fn role_statements_with_conditions(t: &Value) -> Vec<(String, Value, Option<String>)> {
    let mut out = Vec::new();
    for (id, resource) in resources(t) {
        let id = id.as_str().unwrap().to_string();
        match resource["Type"].as_str() {
            Some("AWS::IAM::Role") => {
                for policy in resource["Properties"]["Policies"].as_sequence().into_iter().flatten() {
                    for (st, condition) in statements(&policy["PolicyDocument"]["Statement"]) {
                        out.push((id.clone(), st, condition));
                    }
                }
            }
            Some("AWS::IAM::Policy") => {
                for role in resource["Properties"]["Roles"].as_sequence().unwrap() {
                    let role = reference(role).expect("policies attach to roles by !Ref");
                    for (st, condition) in statements(&resource["Properties"]["PolicyDocument"]["Statement"]) {
                        out.push((role.clone(), st, condition));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn each_function_has_its_own_role_and_grants_exactly_what_its_code_calls() {
    let t = template();
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (role, st) in role_statements(&t) {
        assert_eq!(st["Effect"].as_str(), Some("Allow"), "{role}");
        if st["Resource"].as_str() == Some("*") {
            // CreateKey names no resource; it is allowed only for ES256 signing keys.
            assert_eq!(strings(&st["Action"]), ["kms:CreateKey"], "{role} grants on Resource *");
            let conditions = &st["Condition"]["StringEquals"];
            assert_eq!(conditions["kms:KeySpec"].as_str(), Some("ECC_NIST_P256"), "{role}");
            assert_eq!(conditions["kms:KeyUsage"].as_str(), Some("SIGN_VERIFY"), "{role}");
        }
        for action in strings(&st["Action"]) {
            assert!(!action.contains('*'), "{role} grants wildcard action {action}");
            granted.entry(role.clone()).or_default().insert(action);
        }
    }
    let expected: BTreeMap<String, BTreeSet<String>> = expected_actions()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(granted, expected);

    let mut roles = BTreeSet::new();
    let mut functions = 0;
    for (id, resource) in resources(&t) {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        functions += 1;
        let role = reference(&resource["Properties"]["Role"]).unwrap_or_else(|| panic!("{id:?} has an explicit role"));
        assert!(roles.insert(role), "{id:?} shares a role");
        assert_eq!(resource["Metadata"]["BuildMethod"].as_str(), Some("rust-cargolambda"));
    }
    assert_eq!(functions, 5);
}

#[test]
fn only_exchange_may_decrypt_and_key_policies_keep_crypto_from_the_account() {
    let t = template();
    for (role, st) in role_statements(&t) {
        if strings(&st["Action"]).iter().any(|a| a == "kms:Decrypt") {
            assert_eq!(role, "ExchangeRole", "{role} may decrypt");
        }
    }
    for (id, resource) in resources(&t) {
        if resource["Type"].as_str() != Some("AWS::KMS::Key") {
            continue;
        }
        for (st, _) in statements(&resource["Properties"]["KeyPolicy"]["Statement"]) {
            let actions = strings(&st["Action"]);
            // Roles named by !GetAtt, alone or in a list; anything else (the account root) is None.
            let principal = &st["Principal"]["AWS"];
            let roles: Option<Vec<String>> = match principal {
                Value::Sequence(items) => items.iter().map(reference).collect(),
                other => reference(other).map(|r| vec![r]),
            };
            if roles.as_deref() != Some(&["ExchangeRole".to_string()][..]) {
                assert!(
                    actions.iter().all(|a| a != "kms:Decrypt"),
                    "{id:?}: only the exchange role may decrypt"
                );
            }
            if roles.is_none() {
                // The account root administers the key but must not be able to use it, so no IAM
                // policy anywhere can grant crypto operations on it.
                for action in &actions {
                    assert!(
                        !CRYPTO_ACTIONS.contains(&action.as_str()),
                        "{id:?}: account may {action}"
                    );
                }
            }
        }
    }
}

/// The audit key certifies audit chains and nothing else: every function gets its id, may only
/// Sign raw statements with it, and the sweeper's one KMS grant is on it alone.
#[test]
fn the_audit_key_certifies_chains_for_every_writer_and_the_sweeper_signs_with_nothing_else() {
    let t = template();
    let key = &resources(&t)["AuditKey"]["Properties"];
    assert_eq!(key["KeySpec"].as_str(), Some("ECC_NIST_P256"));
    assert_eq!(key["KeyUsage"].as_str(), Some("SIGN_VERIFY"));
    let mut certifiers = BTreeSet::new();
    for (st, condition) in statements(&key["KeyPolicy"]["Statement"]) {
        if condition.as_deref() == Some("HasOperatorRole") {
            // Operators (a deployment parameter) certify brokerctl's chains, with the same limits.
            assert_eq!(reference(&st["Principal"]["AWS"]).as_deref(), Some("OperatorRoleArn"));
            assert_eq!(strings(&st["Action"]), ["kms:Sign"]);
            assert_eq!(st["Condition"]["StringEquals"]["kms:MessageType"].as_str(), Some("RAW"));
            continue;
        }
        let Value::Sequence(roles) = &st["Principal"]["AWS"] else {
            continue; // the account root: administrative actions only (checked above)
        };
        assert_eq!(strings(&st["Action"]), ["kms:Sign"]);
        let conditions = &st["Condition"]["StringEquals"];
        assert_eq!(conditions["kms:MessageType"].as_str(), Some("RAW"));
        assert_eq!(conditions["kms:SigningAlgorithm"].as_str(), Some("ECDSA_SHA_256"));
        certifiers.extend(roles.iter().filter_map(reference));
    }
    assert_eq!(certifiers, audit_writers(), "every audit writer certifies its chains");
    for (id, resource) in resources(&t) {
        if resource["Type"].as_str() == Some("AWS::Serverless::Function") && id.as_str() != Some("AuditExportFunction")
        {
            let variables = &resource["Properties"]["Environment"]["Variables"];
            assert_eq!(
                reference(&variables["NHI_AUDIT_KEY_ID"]).as_deref(),
                Some("AuditKey"),
                "{id:?}"
            );
        }
    }
    for (role, st) in role_statements(&t) {
        let signs = strings(&st["Action"]).iter().any(|a| a == "kms:Sign");
        if signs && role == "ExpireSweeperRole" {
            assert_eq!(reference(&st["Resource"]).as_deref(), Some("AuditKey"), "{st:?}");
        }
    }
}

/// Envelope signing keys exist only in signing mode `envelope`: the grants that make and decrypt
/// them exist only under that condition, and every grant bound to their context is one of them.
#[test]
fn envelope_key_grants_exist_only_in_envelope_mode() {
    let t = template();
    let envelope_context = |st: &Value| {
        st["Condition"]["StringEquals"]["kms:EncryptionContext:nhi:purpose"].as_str() == Some("signing-key")
    };
    let mut seen = Vec::new();
    let mut check = |who: String, st: Value, condition: Option<String>| {
        let actions = strings(&st["Action"]);
        if actions.iter().any(|a| a == "kms:GenerateDataKeyPairWithoutPlaintext") || envelope_context(&st) {
            assert_eq!(condition.as_deref(), Some("EnvelopeSigning"), "{who}: {st:?}");
            assert!(envelope_context(&st), "{who}: not bound to the envelope key context");
            seen.push((who, actions));
        } else if condition.as_deref() == Some("HasOperatorRole") {
            // The operators' audit-certification grant (checked in the audit key's test).
            assert!(who.contains("\"AuditKey\""), "{who}: {st:?}");
        } else {
            assert_eq!(
                condition, None,
                "{who}: only envelope and operator grants are conditional"
            );
        }
    };
    for (role, st, condition) in role_statements_with_conditions(&t) {
        check(role, st, condition);
    }
    for (id, resource) in resources(&t) {
        if resource["Type"].as_str() == Some("AWS::KMS::Key") {
            for (st, condition) in statements(&resource["Properties"]["KeyPolicy"]["Statement"]) {
                check(format!("{id:?} key policy"), st, condition);
            }
        }
    }
    // Exchange decrypts and rotate generates, in both the key policy and the role policies.
    assert_eq!(seen.len(), 4, "{seen:?}");
    let condition = &t["Conditions"]["EnvelopeSigning"];
    assert!(format!("{condition:?}").contains("envelope"), "{condition:?}");
}

#[test]
fn every_function_environment_satisfies_the_typed_config() {
    let t = template();
    let mut checked = Vec::new();
    for (id, resource) in resources(&t) {
        let Some(vars) = resource["Properties"]["Environment"]["Variables"].as_mapping() else {
            continue;
        };
        let names: BTreeSet<String> = vars.keys().map(|k| k.as_str().unwrap().to_string()).collect();
        // audit-export reads only its bucket (nhi_broker::wiring::export_service_from_env).
        if id.as_str() == Some("AuditExportFunction") {
            assert_eq!(names, BTreeSet::from(["NHI_EXPORT_BUCKET".to_string()]));
            assert_eq!(
                reference(&vars["NHI_EXPORT_BUCKET"]).as_deref(),
                Some("AuditExportBucket")
            );
            checked.push("AuditExportFunction".to_string());
            continue;
        }
        // A Ref to a parameter takes the parameter's default; other values get stand-ins.
        let default_of = |name: &str| -> Option<String> {
            let parameter = reference(vars.get(name)?)?;
            match &t["Parameters"][parameter.as_str()]["Default"] {
                Value::Number(n) => Some(n.to_string()),
                Value::String(s)
                    if s.parse::<i64>().is_ok()
                        || t["Parameters"][parameter.as_str()]["AllowedValues"].is_sequence() =>
                {
                    Some(s.clone())
                }
                _ => None,
            }
        };
        let config = nhi_broker::config::Config::from_lookup(|name| {
            names.contains(name).then(|| default_of(name)).flatten().or_else(|| {
                names.contains(name).then(|| match name {
                    "NHI_BROKER_ISSUER" => "https://broker.example".to_string(),
                    "NHI_MAX_TOKEN_TTL_SECONDS" => "3600".to_string(),
                    "NHI_CLOCK_LEEWAY_SECONDS" => "30".to_string(),
                    "NHI_SIGNING_KEY_MAX_AGE_SECONDS" => "2592000".to_string(),
                    "NHI_SIGNING_KEY_SIGNERS" | "NHI_SIGNING_KEY_ADMIN_ROLE" => {
                        "arn:aws:iam::123456789012:role/x".to_string()
                    }
                    _ => "value".to_string(),
                })
            })
        });
        assert!(config.is_ok(), "{id:?}: {config:?}");
        checked.push(id.as_str().unwrap().to_string());
    }
    assert_eq!(
        checked,
        [
            "ExchangeFunction",
            "RotateFunction",
            "RevokeFanoutFunction",
            "ExpireSweeperFunction",
            "AuditExportFunction"
        ]
    );
}

#[test]
fn tables_declare_streams_ttl_and_point_in_time_recovery() {
    let t = template();
    let r = resources(&t);
    for table in ["RegistryTable", "LeasesTable", "AuditTable", "RevocationsTable"] {
        let props = &r[table]["Properties"];
        assert_eq!(
            props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"].as_bool(),
            Some(true),
            "{table}"
        );
    }
    assert_eq!(
        r["LeasesTable"]["Properties"]["TimeToLiveSpecification"]["AttributeName"].as_str(),
        Some("ttl")
    );
    assert!(r["RevocationsTable"]["Properties"]["StreamSpecification"]["StreamViewType"].is_string());
    assert_eq!(r["SigningKey"]["Properties"]["KeySpec"].as_str(), Some("ECC_NIST_P256"));
    assert_eq!(r["SigningKey"]["Properties"]["KeyUsage"].as_str(), Some("SIGN_VERIFY"));
}

/// The adapter sources each function's wiring (`nhi_broker::wiring`) runs.
fn function_sources() -> BTreeMap<&'static str, Vec<&'static str>> {
    // The DynamoDB helpers, registry, ledger and audit chains every function shares.
    const DYNAMO: [&str; 5] = [
        "aws/dynamo/mod.rs",
        "aws/dynamo/registry.rs",
        "aws/dynamo/ledger.rs",
        "aws/dynamo/release_items.rs",
        "aws/dynamo/audit.rs",
    ];
    const FANOUT: [&str; 3] = [
        "aws/dynamo/fanout.rs",
        "aws/dynamo/deliveries.rs",
        "aws/dynamo/expiry.rs",
    ];
    let src = |groups: &[&[&'static str]]| groups.concat();
    BTreeMap::from([
        (
            "ExchangeRole",
            src(&[
                &DYNAMO,
                &["aws/dynamo/rotation.rs", "aws/kms.rs", "aws/envelope.rs", "aws/sts.rs"],
            ]),
        ),
        ("RotateRole", src(&[&DYNAMO, &["aws/dynamo/rotation.rs", "aws/kms.rs"]])),
        (
            "RevokeFanoutRole",
            src(&[
                &DYNAMO,
                &FANOUT,
                &[
                    "aws/dynamo/rotation.rs",
                    "aws/kms.rs",
                    "aws/iam.rs",
                    "aws/eventbridge.rs",
                ],
            ]),
        ),
        (
            "ExpireSweeperRole",
            src(&[&DYNAMO, &FANOUT, &["aws/kms.rs", "aws/dynamo/digest.rs"]]),
        ),
        ("AuditExportRole", vec!["aws/s3.rs"]),
    ])
}

/// How each IAM action shows up in adapter code: an SDK call, or an item of a transaction.
fn call_sites(action: &str) -> Option<&'static [&'static str]> {
    Some(match action {
        "dynamodb:GetItem" => &[".get_item()"],
        "dynamodb:Query" => &[".query()"],
        "dynamodb:PutItem" => &[".put_item()", "Put::builder()"],
        "dynamodb:UpdateItem" => &[".update_item()", "Update::builder()"],
        "dynamodb:ConditionCheckItem" => &["ConditionCheck::builder()"],
        "kms:Sign" => &[".sign()"],
        "kms:GetPublicKey" => &[".get_public_key()"],
        "kms:Decrypt" => &[".decrypt()"],
        "kms:Encrypt" => &[".encrypt()"],
        "kms:CreateKey" => &[".create_key()"],
        "kms:GenerateDataKeyPairWithoutPlaintext" => &[".generate_data_key_pair_without_plaintext()"],
        "sts:AssumeRole" => &[".assume_role()"],
        "sts:TagSession" => &[".set_tags(", ".tags("],
        "sts:SetSourceIdentity" => &[".source_identity("],
        "events:PutEvents" => &[".put_events()"],
        "iam:PutRolePolicy" => &[".put_role_policy()"],
        "iam:DeleteRolePolicy" => &[".delete_role_policy()"],
        "s3:PutObject" => &[".put_object()"],
        _ => return None,
    })
}

/// Actions used by AWS on the function's behalf, not by its code: the log driver, and Lambda's
/// event source mapping (stream reads, the on-failure queue).
const SERVICE_ACTIONS: &[&str] = &[
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
    "dynamodb:ListStreams",
    "sqs:SendMessage",
];

#[test]
fn no_role_grants_an_action_its_functions_code_never_calls() {
    let t = template();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/src/");
    for (role, st) in role_statements(&t) {
        let sources: String = function_sources()[role.as_str()]
            .iter()
            .map(|f| std::fs::read_to_string(format!("{root}{f}")).unwrap())
            .collect();
        for action in strings(&st["Action"]) {
            if SERVICE_ACTIONS.contains(&action.as_str()) {
                continue;
            }
            let sites = call_sites(&action).unwrap_or_else(|| panic!("{role}: no known call site for {action}"));
            assert!(
                sites.iter().any(|site| sources.contains(site)),
                "{role} grants {action} but none of its adapters calls it ({sites:?})"
            );
        }
    }
}

/// The audit export: a bucket with Object Lock, versioning, encryption, a lifecycle and no public
/// access; its stream on the audit table; only audit-export may write to it, under audit/v1/ only,
/// and no role may delete from it or loosen its lock.
#[test]
fn the_audit_export_bucket_is_locked_and_only_appended_to() {
    let t = template();
    let r = resources(&t);
    let bucket = &r["AuditExportBucket"]["Properties"];
    assert_eq!(bucket["ObjectLockEnabled"].as_bool(), Some(true));
    assert_eq!(
        bucket["ObjectLockConfiguration"]["ObjectLockEnabled"].as_str(),
        Some("Enabled")
    );
    let retention = &bucket["ObjectLockConfiguration"]["Rule"]["DefaultRetention"];
    assert_eq!(reference(&retention["Mode"]).as_deref(), Some("AuditExportLockMode"));
    assert_eq!(
        reference(&retention["Days"]).as_deref(),
        Some("AuditExportRetentionDays")
    );
    assert_eq!(bucket["VersioningConfiguration"]["Status"].as_str(), Some("Enabled"));
    assert!(bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"].is_sequence());
    assert!(bucket["LifecycleConfiguration"]["Rules"].is_sequence());
    for flag in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(
            bucket["PublicAccessBlockConfiguration"][flag].as_bool(),
            Some(true),
            "{flag}"
        );
    }
    assert_eq!(
        r["AuditTable"]["Properties"]["StreamSpecification"]["StreamViewType"].as_str(),
        Some("NEW_AND_OLD_IMAGES")
    );
    for (role, st) in role_statements(&t) {
        for action in strings(&st["Action"]).iter().filter(|a| a.starts_with("s3:")) {
            assert_eq!((role.as_str(), action.as_str()), ("AuditExportRole", "s3:PutObject"));
            let resource = format!("{:?}", st["Resource"]);
            assert!(resource.contains("AuditExportBucket.Arn}/audit/v1/*"), "{resource}");
        }
    }
    let policy = &r["AuditExportBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"];
    let denied: Vec<String> = policy
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|st| st["Effect"].as_str() == Some("Deny"))
        .flat_map(|st| strings(&st["Action"]))
        .collect();
    for action in ["s3:BypassGovernanceRetention", "s3:PutBucketObjectLockConfiguration"] {
        assert!(denied.iter().any(|a| a == action), "{action} is not denied: {denied:?}");
    }
}
