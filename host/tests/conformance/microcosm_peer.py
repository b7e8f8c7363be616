"""A microcosm-pubsub 3.0.0 service: its SNSProducer and its SQSConsumer + dispatcher.

Configured only through microcosm's own config loader (load_from_dict). One message schema is
declared the way a microcosm service declares it (a PubSubMessageSchema subclass with a
MEDIA_TYPE, registered by @handles), for the media type in PEER_MEDIA_TYPE.

  produce BODY                  SNSProducer.produce(PEER_MEDIA_TYPE, BODY) to PEER_TOPIC_ARN;
                                prints the message id
  encode BODY                   the message body SNSProducer.create_message writes for BODY
                                (what produce publishes), without publishing it
  consume QUEUE_URL LEDGER      SQSMessageDispatcher.handle_batch over SQSConsumer (the default
                                CodecSQSEnvelope) in a loop; the handler appends one JSON line
                                per message to LEDGER; every message the consumer could not
                                read is printed to stderr as "peer: rejected ..."

PEER_ENDPOINT_URL: the SNS/SQS endpoint (moto).
"""

import json
import os
import sys
import time

from marshmallow import fields
from microcosm.api import create_object_graph, load_from_dict
from microcosm_pubsub.codecs import PubSubMessageSchema
from microcosm_pubsub.decorators import handles

MEDIA_TYPE = os.environ["PEER_MEDIA_TYPE"]
LEDGER = None


class OrderSchema(PubSubMessageSchema):
    MEDIA_TYPE = MEDIA_TYPE

    id = fields.Integer(required=True)
    item = fields.String(required=True)


@handles(OrderSchema)
def on_order(content):
    with open(LEDGER, "a") as f:
        f.write(
            json.dumps(
                {
                    "label": "microcosm",
                    "media_type": content.get("media_type"),
                    "content": {k: v for k, v in content.items() if k not in ("media_type", "opaque_data")},
                    "pid": os.getpid(),
                }
            )
            + "\n"
        )
    return True


def graph(queue_url=None):
    endpoint = os.environ["PEER_ENDPOINT_URL"]
    config = dict(
        sns_producer=dict(endpoint_url=endpoint, region_name="us-east-1"),
        sns_topic_arns=dict(default=os.environ.get("PEER_TOPIC_ARN")),
        sqs_consumer=dict(
            endpoint_url=endpoint,
            region_name="us-east-1",
            sqs_queue_url=queue_url or "unused",
            # microcosm-pubsub 3.0.0 reads this key without declaring a default for it
            # (consumer.py, configure_sqs_consumer): a service has to set it.
            sqs_event=None,
            wait_seconds=1,
        ),
    )
    g = create_object_graph("peer", loader=load_from_dict(config))
    if queue_url:
        g.use("sqs_message_dispatcher")
    else:
        g.use("sns_producer")
    g.lock()
    return g


def produce(body):
    g = graph()
    print(g.sns_producer.produce(MEDIA_TYPE, json.loads(body)))


def encode(body):
    g = graph()
    print(g.sns_producer.create_message(MEDIA_TYPE, json.loads(body)).message)


def consume(queue_url, ledger):
    global LEDGER
    LEDGER = ledger
    g = graph(queue_url)
    bound = {MEDIA_TYPE: on_order}
    print("peer: polling", flush=True)
    while True:
        try:
            for result in g.sqs_message_dispatcher.handle_batch(bound):
                print(f"peer: {result.result}", file=sys.stderr, flush=True)
        except Exception as error:  # what SQSConsumer.consume() refuses
            print(f"peer: rejected {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            time.sleep(0.2)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "produce":
        produce(*args)
    elif command == "encode":
        encode(*args)
    elif command == "consume":
        consume(*args)
    else:
        sys.exit(f"unknown command {command}")
