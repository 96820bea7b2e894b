"""Golden wire checks against py-libp2p 0.8.1's own rendezvous definitions.

  golden.py capture DIR   write the request frames py-libp2p's client builds
                          (its message builders, framed as its client writes
                          them: varint length, then the body) as hex files
  golden.py decode        read hex frames (one per line) on stdin, decode each
                          with py-libp2p's rendezvous_pb2 and parse_peer_info,
                          print one JSON object per line
"""

import json
import sys
from pathlib import Path

import varint
from multiaddr import Multiaddr

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.discovery.rendezvous import messages
from libp2p.discovery.rendezvous.pb.rendezvous_pb2 import Message
from libp2p.peer.id import ID

SEED = bytes([7] * 32)


def frame(msg: Message) -> bytes:
    body = msg.SerializeToString()
    # The client writes the prefix and the body in two writes; joined here.
    return varint.encode(len(body)) + body


def capture(out: Path) -> None:
    peer = ID.from_pubkey(create_new_key_pair(SEED).public_key)
    addrs = [
        Multiaddr("/ip4/127.0.0.1/tcp/4001"),
        Multiaddr(f"/ip4/192.168.1.5/tcp/4001/p2p/{peer}"),
    ]
    cookie = (5).to_bytes(8, "big") + b"golden"
    frames = {
        "01-request-register": messages.create_register_message("golden", peer, addrs, 7200),
        "02-request-discover": messages.create_discover_message("golden", 10),
        "03-request-discover-cookie": messages.create_discover_message("golden", 10, cookie),
        "04-request-unregister": messages.create_unregister_message("golden", peer),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, msg in frames.items():
        (out / f"{name}.hex").write_text(frame(msg).hex() + "\n")
    (out / "peer-id.txt").write_text(f"{peer}\n")


def describe(msg: Message) -> dict:
    out = {"type": msg.type}
    if msg.HasField("registerResponse"):
        r = msg.registerResponse
        out["register_response"] = {"status": r.status, "status_text": r.statusText, "ttl": r.ttl}
    if msg.HasField("discoverResponse"):
        d = msg.discoverResponse
        regs = []
        for reg in d.registrations:
            peer, addrs = messages.parse_peer_info(reg.peer)
            regs.append({"ns": reg.ns, "ttl": reg.ttl, "peer": str(peer), "addrs": [str(a) for a in addrs]})
        out["discover_response"] = {
            "status": d.status,
            "status_text": d.statusText,
            "cookie": d.cookie.hex(),
            "registrations": regs,
        }
    return out


def decode() -> None:
    for line in sys.stdin:
        data = bytes.fromhex(line.strip())
        length = varint.decode_bytes(data)
        body = data[len(varint.encode(length)):]
        assert len(body) == length, f"frame of {len(body)} bytes, prefix says {length}"
        print(json.dumps(describe(Message.FromString(body))), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["capture"]:
        capture(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["decode"]:
        decode()
    else:
        sys.exit(__doc__)
