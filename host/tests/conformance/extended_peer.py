"""The real Amazon SQS and SNS Extended Client Libraries for Python, driven against moto by
host/tests/it/claim_check.rs: they publish large bodies through S3 for iniesta to read, and
read what iniesta published through S3.

    extended_peer.py publish ENDPOINT BUCKET TOPIC_ARN EVENT SIZE
        publish a SIZE-byte JSON body (sns_extended_client) with iniesta's attributes;
        prints {"sha256": ...} of the body
    extended_peer.py receive ENDPOINT BUCKET QUEUE_URL COUNT
        receive COUNT messages (sqs_extended_client), delete them; one JSON line each:
        {"sha256", "size", "attributes": {name: value}}
"""
import hashlib
import json
import sys

import boto3
from botocore.config import Config


def s3_client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


def publish(endpoint, bucket, topic_arn, event, size):
    import sns_extended_client  # noqa: F401  (extends boto3's SNS client on import)

    sns = boto3.client("sns", endpoint_url=endpoint, region_name="us-east-1")
    sns.large_payload_support = bucket
    sns.s3_client = s3_client(endpoint)
    head = '{"filler": "'
    body = head + "x" * (size - len(head) - 2) + '"}'
    sns.publish(
        TopicArn=topic_arn,
        Message=body,
        MessageAttributes={
            "iniesta_pass": {"DataType": "String", "StringValue": event},
            "version": {"DataType": "Number", "StringValue": "1"},
        },
    )
    print(json.dumps({"sha256": hashlib.sha256(body.encode()).hexdigest()}))


def receive(endpoint, bucket, queue_url, count):
    from sqs_extended_client import SQSExtendedClientSession

    sqs = SQSExtendedClientSession(region_name="us-east-1").client(
        "sqs", endpoint_url=endpoint
    )
    sqs.large_payload_support = bucket
    sqs.s3_client = s3_client(endpoint)
    seen = 0
    for _ in range(60):
        got = sqs.receive_message(
            QueueUrl=queue_url,
            MessageAttributeNames=["All"],
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
        )
        for m in got.get("Messages", []):
            body = m["Body"].encode()
            attributes = {
                k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()
            }
            print(
                json.dumps(
                    {
                        "sha256": hashlib.sha256(body).hexdigest(),
                        "size": len(body),
                        "attributes": attributes,
                    }
                ),
                flush=True,
            )
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
            seen += 1
        if seen >= count:
            return
    sys.exit(f"received {seen} of {count} messages")


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "publish":
        publish(args[0], args[1], args[2], args[3], int(args[4]))
    elif mode == "receive":
        receive(args[0], args[1], args[2], int(args[3]))
    else:
        sys.exit(f"unknown mode {mode}")
