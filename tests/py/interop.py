"""A py-libp2p 0.8.1 peer for the interoperability tests, on loopback only.

  interop.py serve
      runs py-libp2p's RendezvousService; prints `ADDR <multiaddr>` once, then
      `STATS <json>` whenever its namespace statistics change.
  interop.py client <server multiaddr> <namespace> <release file>
      registers with py-libp2p's RendezvousDiscovery, prints `REGISTERED <ttl>`,
      discovers (`FOUND <peer id> <addrs...>` per peer, then `FOUND-END <n>`),
      waits until <release file> exists, unregisters, prints `UNREGISTERED`.

Every wait is bounded; the process ends by itself.
"""

import json
import os
import sys

import multiaddr
import trio

from libp2p import new_host
from libp2p.discovery.rendezvous import RendezvousDiscovery, RendezvousService
from libp2p.peer.peerinfo import info_from_p2p_addr

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
LIMIT_SECONDS = 60


def say(*words):
    print(*words, flush=True)


async def serve():
    host = new_host()
    async with host.run([LOOPBACK]):
        service = RendezvousService(host)
        say("ADDR", f"{host.get_addrs()[0]}")
        last = None
        with trio.move_on_after(LIMIT_SECONDS * 3):
            while True:
                stats = {ns: n for ns, n in service.get_namespace_stats().items() if n}
                if stats != last:
                    say("STATS", json.dumps(stats, sort_keys=True))
                    last = stats
                await trio.sleep(0.05)


async def client(server, namespace, release):
    info = info_from_p2p_addr(multiaddr.Multiaddr(server))
    host = new_host()
    async with host.run([LOOPBACK]):
        with trio.fail_after(LIMIT_SECONDS):
            await host.connect(info)
            discovery = RendezvousDiscovery(host, info.peer_id, False)
            ttl = await discovery.advertise(namespace, ttl=7200)
            say("REGISTERED", int(ttl), host.get_id())
            peers, _cookie = await discovery.client.discover(namespace, 100, b"")
            for peer in peers:
                say("FOUND", peer.peer_id, *[str(a) for a in peer.addrs])
            say("FOUND-END", len(peers))
            while not os.path.exists(release):
                await trio.sleep(0.05)
            await discovery.unregister(namespace)
            await trio.sleep(0.2)  # let the UNREGISTER leave before the host closes
            say("UNREGISTERED")
            await discovery.close()


def main():
    if sys.argv[1:2] == ["serve"]:
        trio.run(serve)
    elif sys.argv[1:2] == ["client"] and len(sys.argv) == 5:
        trio.run(client, *sys.argv[2:5])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
