"""The boto3 peer: a plain receive/handle/delete loop, as microcosm-pubsub's consumer does it.

Usage: boto3_loop.py ENDPOINT_URL QUEUE_NAME

Receive up to 10 messages with all attributes (long poll), run a no-op handler on each (it
reads the event attribute and the body, like a router would), then delete the batch with
DeleteMessageBatch. Runs until the bench sends SIGTERM.
"""

import sys

import boto3
from botocore.config import Config


def handle(message):
    # A no-op handler: look at what a router looks at, nothing more.
    event = message["MessageAttributes"]["iniesta_pass"]["StringValue"]
    return bool(event) and message["Body"] is not None


def main():
    endpoint, queue = sys.argv[1], sys.argv[2]
    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
    )
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    while True:
        response = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=20,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        entries = []
        for i, message in enumerate(response.get("Messages", [])):
            if handle(message):
                entries.append({"Id": str(i), "ReceiptHandle": message["ReceiptHandle"]})
        if entries:
            sqs.delete_message_batch(QueueUrl=url, Entries=entries)


if __name__ == "__main__":
    main()
