"""The aiobotocore peer: an asyncio receive loop, as the Python iniesta polls.

Usage: aiobotocore_loop.py ENDPOINT_URL QUEUE_NAME

One asyncio task long-polls for up to 10 messages with all attributes, runs a no-op
coroutine handler on each message concurrently (asyncio.gather), then deletes the handled
ones with DeleteMessageBatch. Runs until the bench sends SIGTERM.
"""

import asyncio
import sys

from aiobotocore.session import get_session


async def handle(message):
    # A no-op handler: look at what a router looks at, nothing more.
    event = message["MessageAttributes"]["iniesta_pass"]["StringValue"]
    return bool(event) and message["Body"] is not None


async def main():
    endpoint, queue = sys.argv[1], sys.argv[2]
    session = get_session()
    async with session.create_client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ) as sqs:
        url = (await sqs.get_queue_url(QueueName=queue))["QueueUrl"]
        while True:
            response = await sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=20,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
            messages = response.get("Messages", [])
            results = await asyncio.gather(*(handle(m) for m in messages))
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, (m, ok) in enumerate(zip(messages, results))
                if ok
            ]
            if entries:
                await sqs.delete_message_batch(QueueUrl=url, Entries=entries)


if __name__ == "__main__":
    asyncio.run(main())
