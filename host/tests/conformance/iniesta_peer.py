"""A Python iniesta (insanic-iniesta 0.4.0) service, configured only through its settings.

Settings come from environment variables named like the settings (see peer_settings.py).
Commands (the Rust test host/tests/it/conformance.rs runs them):

  publish-sns EVENT BODY      SNSClient.initialize() + create_message(...).publish(); prints the id
  publish-sqs EVENT BODY      SQSClient.initialize() + create_message(BODY), add_event, send()
  consume LEDGER PORT         an Insanic app, Iniesta.init_app (INIESTA_INITIALIZATION_TYPE
                              decides the start-up checks), a default handler that appends one
                              JSON line per message to LEDGER; prints "peer: polling" once the
                              library's start-up checks passed and polling started
  filter-policies             Iniesta.filter_policies() for INIESTA_SQS_CONSUMER_FILTERS, as JSON
  try-lock KEY [--when-held]  take KEY with the Aioredlock the SQSClient builds; prints
                              "taken" (then releases) or "refused". --when-held: print
                              "waiting", wait until KEY is held (aioredlock's is_locked:
                              a majority of the DBs), then try
  hold-lock KEY SECONDS       take KEY, print "held", keep it SECONDS, release

PEER_LOCK_CACHES (JSON, e.g. {"HOST": "127.0.0.1", "PORT": 6390}) points the library's three
lock caches iniesta1..3 (DBs 1, 2, 3) at that server. insanic-iniesta 0.4.0's init_app writes
its own INIESTA_CACHES (localhost:6379/1..3) into INSANIC_CACHES, so this is applied after it.
PEER_HANDLER_SECONDS: how long the handler holds the message (and so its lock) after recording.
"""

import asyncio
import json
import os
import sys

os.environ.setdefault("INSANIC_SETTINGS_MODULE", "peer_settings")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import moto_shim  # noqa: E402
from insanic.conf import settings  # noqa: E402


def lock_caches():
    raw = os.environ.get("PEER_LOCK_CACHES")
    if not raw:
        return
    server = json.loads(raw)
    settings.INSANIC_CACHES.update(
        {
            f"iniesta{db}": {"HOST": server["HOST"], "PORT": server["PORT"], "DATABASE": db}
            for db in (1, 2, 3)
        }
    )


def producer_settings():
    # What Iniesta.init_app does for a producer: the library's defaults under the service's.
    from iniesta import Iniesta

    Iniesta.load_config(settings)
    lock_caches()


async def publish_sns(event, body):
    from iniesta.sns import SNSClient

    producer_settings()
    moto_shim.install()
    client = await SNSClient.initialize(
        topic_arn=settings.INIESTA_SNS_PRODUCER_GLOBAL_TOPIC_ARN
    )
    message = client.create_message(event=event, message=json.loads(body))
    response = await message.publish()
    print(response["MessageId"])


async def publish_sqs(event, body):
    from iniesta.sqs import SQSClient

    producer_settings()
    client = await SQSClient.initialize()
    message = client.create_message(json.loads(body))
    message.add_event(event)
    sent = await message.send()
    await client.lock_manager.destroy()
    print(sent.message_id)


def consume(ledger, port):
    from insanic import Insanic
    from iniesta import Iniesta
    from iniesta.sqs import SQSClient

    hold = float(os.environ.get("PEER_HANDLER_SECONDS", "0"))
    app = Insanic(settings.SERVICE_NAME, version="0.0.1")
    Iniesta.init_app(app)
    lock_caches()

    @SQSClient.handler
    async def record(message):
        line = {
            "label": "python-iniesta",
            "id": message.message_id,
            "event": message.event,
            "body": message.raw_body,
            "pid": os.getpid(),
        }
        with open(ledger, "a") as f:
            f.write(json.dumps(line) + "\n")
        if hold:
            await asyncio.sleep(hold)

    async def polling(app, loop=None, **kwargs):
        print("peer: polling", flush=True)

    app.register_listener(polling, "after_server_start")
    app.run(host="127.0.0.1", port=int(port), workers=1, access_log=False)


def filter_policies():
    from iniesta import Iniesta

    Iniesta.load_config(settings)
    print(json.dumps(Iniesta.filter_policies()))


def lock_manager():
    from iniesta import Iniesta
    from aioredlock import Aioredlock

    Iniesta.load_config(settings)
    lock_caches()
    connections = [
        "redis://{HOST}:{PORT}/{DATABASE}".format(**info)
        for name, info in settings.INSANIC_CACHES.items()
        if name.startswith("iniesta")
    ]
    return Aioredlock(
        connections,
        retry_count=settings.INIESTA_LOCK_RETRY_COUNT,
        internal_lock_timeout=settings.INIESTA_LOCK_TIMEOUT,
    )


async def try_lock(key, when=None):
    from aioredlock import LockError

    manager = lock_manager()
    if when == "--when-held":
        # Wait until a majority of the three DBs hold KEY (someone else's lock), then try.
        print("waiting", flush=True)
        for _ in range(3000):
            if await manager.is_locked(key):
                break
            await asyncio.sleep(0.02)
        else:
            print("never held")
            await manager.destroy()
            return
    try:
        lock = await manager.lock(key)
    except LockError:
        print("refused")
    else:
        print("taken")
        await manager.unlock(lock)
    await manager.destroy()


async def hold_lock(key, seconds):
    manager = lock_manager()
    lock = await manager.lock(key, lock_timeout=float(seconds) + 5)
    print("held", flush=True)
    await asyncio.sleep(float(seconds))
    await manager.unlock(lock)
    await manager.destroy()
    print("released", flush=True)


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "publish-sns":
        asyncio.run(publish_sns(*args))
    elif command == "publish-sqs":
        asyncio.run(publish_sqs(*args))
    elif command == "consume":
        consume(*args)
    elif command == "filter-policies":
        filter_policies()
    elif command == "try-lock":
        asyncio.run(try_lock(*args))
    elif command == "hold-lock":
        asyncio.run(hold_lock(*args))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
