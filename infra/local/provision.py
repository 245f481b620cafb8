#!/usr/bin/env python3
"""Provision the local AWS emulator from template.yaml, the one source of truth.

Creates every AWS::DynamoDB::Table (keys, GSIs, streams, TTL, PITR), AWS::S3::Bucket (versioning,
Object Lock) and AWS::KMS::Key (spec and usage) the template declares, then resolves each
function's Environment.Variables against what it created and writes them, with the emulator's endpoint and dummy credentials, as a shell env file.

Usage: provision.py --endpoint http://127.0.0.1:PORT --prefix NAME --env-file PATH
                    [--param Name=Value ...]
"""

import argparse
import json
import re
import shlex
import sys

import boto3
import yaml


class CfnLoader(yaml.SafeLoader):
    """YAML loader that turns CloudFormation short-form tags (!Ref, !GetAtt, !Sub...) into the
    long form ({"Ref": ...}, {"Fn::GetAtt": ...})."""


def _construct_tag(loader, tag_suffix, node):
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)


def table_spec(name, props):
    spec = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if props.get("GlobalSecondaryIndexes"):
        spec["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    stream = props.get("StreamSpecification")
    if stream:
        spec["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    return spec


def session_for(region):
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region
    )


def provision(template, endpoint, prefix, region, params):
    session = session_for(region)
    dynamodb = session.client("dynamodb", endpoint_url=endpoint)
    kms = session.client("kms", endpoint_url=endpoint)
    events = session.client("events", endpoint_url=endpoint)
    s3 = session.client("s3", endpoint_url=endpoint)
    refs = {}
    for logical_id, resource in template["Resources"].items():
        kind, props = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::DynamoDB::Table":
            name = f"{prefix}-{logical_id}"
            dynamodb.create_table(**table_spec(name, props))
            dynamodb.get_waiter("table_exists").wait(TableName=name)
            ttl = props.get("TimeToLiveSpecification")
            if ttl and ttl.get("Enabled"):
                dynamodb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
                )
            pitr = props.get("PointInTimeRecoverySpecification", {})
            if pitr.get("PointInTimeRecoveryEnabled"):
                dynamodb.update_continuous_backups(
                    TableName=name,
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
                )
            refs[logical_id] = name
        elif kind == "AWS::KMS::Key":
            key = kms.create_key(
                Description=f"{prefix} {props.get('Description', logical_id)}",
                KeySpec=props.get("KeySpec", "SYMMETRIC_DEFAULT"),
                KeyUsage=props.get("KeyUsage", "ENCRYPT_DECRYPT"),
            )["KeyMetadata"]
            refs[logical_id] = key["KeyId"]
        elif kind == "AWS::S3::Bucket":
            # Bucket names are global and lower case.
            name = f"{prefix}-{logical_id}".lower()
            s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=bool(props.get("ObjectLockEnabled")))
            if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
                s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
            lock = props.get("ObjectLockConfiguration")
            if lock:
                retention = lock["Rule"]["DefaultRetention"]
                s3.put_object_lock_configuration(
                    Bucket=name,
                    ObjectLockConfiguration={
                        "ObjectLockEnabled": "Enabled",
                        "Rule": {
                            "DefaultRetention": {
                                "Mode": resolve(retention["Mode"], refs, params, logical_id, "Mode", template),
                                "Days": int(resolve(retention["Days"], refs, params, logical_id, "Days", template)),
                            }
                        },
                    },
                )
            refs[logical_id] = name
        elif kind == "AWS::Events::EventBus":
            name = resolve(props["Name"], refs, params, logical_id, "Name", template)
            events.create_event_bus(Name=name)
            refs[logical_id] = name
    return refs


def rules(template, refs, params, endpoint, prefix, region):
    """Each function's EventBridgeRule event as a rule in the emulator, targeting an SQS queue the
    local runner reads (EventBridge's delivery to the function, emulated): exports
    NHI_LOCAL_RULE_QUEUE_<FUNCTION> with the queue URL."""
    session = session_for(region)
    events = session.client("events", endpoint_url=endpoint)
    sqs = session.client("sqs", endpoint_url=endpoint)
    out = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        for name, event in resource.get("Properties", {}).get("Events", {}).items():
            if event.get("Type") != "EventBridgeRule":
                continue
            props = event["Properties"]
            bus = resolve(props.get("EventBusName", "default"), refs, params, logical_id, name, template)
            rule = f"{prefix}-{logical_id}-{name}"
            queue = sqs.create_queue(QueueName=rule)["QueueUrl"]
            queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps(props["Pattern"]))
            events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "local-runner", "Arn": queue_arn}])
            out[f"NHI_LOCAL_RULE_QUEUE_{logical_id.upper()}"] = queue
            if bus != "default":
                out["NHI_EVENT_BUS"] = bus
    return out


LOCAL_ACCOUNT = "123456789012"


def resolve(value, refs, params, logical_id, var, template):
    """Resolve the intrinsic functions the template's Environment.Variables use: literals, Ref to
    a created resource or a parameter, GetAtt Role.Arn (a made-up ARN in the emulator's account)
    and Sub over those."""
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, dict) and "Ref" in value:
        name = value["Ref"]
        if name in refs:
            return refs[name]
        if name in params:
            return params[name]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target, attribute = value["Fn::GetAtt"]
        if attribute == "Arn" and template["Resources"].get(target, {}).get("Type") == "AWS::IAM::Role":
            return f"arn:aws:iam::{LOCAL_ACCOUNT}:role/{target}"
    if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str):
        def substitute(match):
            name = match.group(1)
            inner = {"Fn::GetAtt": name.split(".", 1)} if "." in name else {"Ref": name}
            return resolve(inner, refs, params, logical_id, var, template)

        return re.sub(r"\$\{([^}]+)\}", substitute, value["Fn::Sub"])
    raise SystemExit(
        f"provision: cannot resolve {logical_id}.Environment.{var} = {value!r} locally; "
        "pass --param Name=Value for template parameters"
    )


def function_environment(template, refs, params):
    env = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        variables = resource.get("Properties", {}).get("Environment", {}).get("Variables", {})
        for var, value in variables.items():
            resolved = resolve(value, refs, params, logical_id, var, template)
            if env.get(var, resolved) != resolved:
                raise SystemExit(f"provision: {var} differs between functions; local runs need one value")
            env[var] = resolved
    return env


def schedules(template, params):
    """Each scheduled function's expression, e.g. NHI_LOCAL_SCHEDULE_ROTATEFUNCTION=rate(1 hour),
    so the local runner runs it on the template's schedule."""
    out = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        for name, event in resource.get("Properties", {}).get("Events", {}).items():
            if event.get("Type") == "Schedule":
                expression = resolve(event["Properties"]["Schedule"], {}, params, logical_id, name, template)
                out[f"NHI_LOCAL_SCHEDULE_{logical_id.upper()}"] = expression
    return out


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", default="template.yaml")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--env-file", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--param", action="append", default=[], help="template parameter Name=Value")
    args = parser.parse_args(argv)

    template = load_template(args.template)
    params = {
        name: str(spec["Default"])
        for name, spec in template.get("Parameters", {}).items()
        if "Default" in spec
    }
    for pair in args.param:
        name, _, value = pair.partition("=")
        params[name] = value

    # Pseudo parameters, as CloudFormation would resolve them for a stack named after the prefix.
    params.update({
        "AWS::StackName": args.prefix,
        "AWS::Region": args.region,
        "AWS::AccountId": LOCAL_ACCOUNT,
        "AWS::Partition": "aws",
    })
    refs = provision(template, args.endpoint, args.prefix, args.region, params)
    env = {
        "AWS_ENDPOINT_URL": args.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": args.region,
        "AWS_EC2_METADATA_DISABLED": "true",
        **{f"NHI_LOCAL_{k.upper()}": v for k, v in refs.items()},
        **function_environment(template, refs, params),
        **schedules(template, params),
        **rules(template, refs, params, args.endpoint, args.prefix, args.region),
    }
    with open(args.env_file, "w", encoding="utf-8") as f:
        for k, v in env.items():
            f.write(f"export {k}={shlex.quote(v)}\n")
    print(f"provisioned {len(refs)} resources from {args.template}; environment in {args.env_file}")


if __name__ == "__main__":
    main(sys.argv[1:])
