"""pop-evbus 7.0.1 reading its profiles from an acct file, then fanning one event out.

pop-evbus has no SNS/SQS publisher: its only ingress plugin is `internal` (asyncio queues in
the process, profiles keyed by `routing_key`). What it shares with iniesta-rs is the acct
credential file, so this reads PROFILES from ACCT_FILE with ACCT_KEY through
hub.evbus.acct.profiles (acct under the hood), starts the bus, puts BODY for PROFILE and reads
it back from the internal queue that profile names. Prints one JSON object:
{"profiles": {provider: [profile names]}, "routing_key": ..., "received": body}.

  evbus_peer.py ACCT_FILE ACCT_KEY PROFILE BODY
"""

import asyncio
import json
import sys

import pop.hub


async def main(acct_file, acct_key, profile, body):
    hub = pop.hub.Hub()
    hub.pop.sub.add(dyne_name="log")
    hub.pop.sub.add(dyne_name="evbus")
    contexts = await hub.evbus.acct.profiles(acct_file=acct_file, acct_key=acct_key)
    names = {
        provider: sorted(name for entry in entries for name in entry)
        for provider, entries in contexts.items()
    }
    routing_key = None
    for entry in contexts.get("internal", []):
        if profile in entry:
            routing_key = entry[profile].get("routing_key")
    bus = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join()
    await hub.evbus.broker.put(body=json.loads(body), profile=profile)
    queue = await hub.ingress.internal.get(routing_key=routing_key)
    received = await asyncio.wait_for(queue.get(), 30)
    await hub.evbus.init.stop()
    await bus
    print(
        json.dumps(
            {
                "profiles": names,
                "routing_key": routing_key,
                "received": json.loads(received),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
