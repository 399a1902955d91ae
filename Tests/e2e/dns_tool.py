#!/usr/bin/env python3
"""DNS for the e2e suites, in plain Python (no dnspython): a client that sends one query
and prints the answer as JSON, and a stand-in upstream resolver that answers a fixed
zone (the node's upstream, reached by the DNS proxy's forwarder from inside the pods).

    dns_tool.py query NAME [TYPE] [--server IP] [--port N] [--tcp]
    dns_tool.py serve --listen IP [--port N] --zone NAME=IP [--zone …]
"""

import argparse
import json
import os
import random
import socket
import socketserver
import struct
import sys
import threading

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}
NAMES = {value: key for key, value in TYPES.items()}


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def read_name(data, at, hops=0):
    labels = []
    while True:
        length = data[at]
        if length & 0xC0 == 0xC0:
            pointer = struct.unpack("!H", data[at:at + 2])[0] & 0x3FFF
            if hops > 20:
                raise ValueError("compression loop")
            rest, _ = read_name(data, pointer, hops + 1)
            labels.append(rest)
            return ".".join(label for label in labels if label), at + 2
        at += 1
        if length == 0:
            return ".".join(labels), at
        labels.append(data[at:at + length].decode())
        at += length


def build_query(name, qtype, ident=None):
    ident = random.randint(0, 0xFFFF) if ident is None else ident
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # RD
    return ident, header + encode_name(name) + struct.pack("!HH", qtype, 1)


def parse_response(data):
    ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    at = 12
    for _ in range(qd):
        _, at = read_name(data, at)
        at += 4
    answers = []
    for _ in range(an):
        name, at = read_name(data, at)
        rtype, rclass, ttl, length = struct.unpack("!HHIH", data[at:at + 10])
        at += 10
        rdata = data[at:at + length]
        at += length
        if rtype == 1:
            value = socket.inet_ntop(socket.AF_INET, rdata)
        elif rtype == 28:
            value = socket.inet_ntop(socket.AF_INET6, rdata)
        elif rtype == 5:
            value, _ = read_name(data, at - length)
        else:
            value = rdata.hex()
        answers.append({"name": name, "type": NAMES.get(rtype, rtype), "ttl": ttl, "value": value})
    return {"id": ident, "rcode": flags & 0xF, "aa": bool(flags & 0x0400), "tc": bool(flags & 0x0200),
            "qr": bool(flags & 0x8000), "answers": answers}


def query(args):
    qtype = TYPES.get(args.type.upper(), None) or int(args.type)
    ident, message = build_query(args.name, qtype)
    if args.tcp:
        with socket.create_connection((args.server, args.port), timeout=5) as conn:
            conn.sendall(struct.pack("!H", len(message)) + message)
            length = struct.unpack("!H", recv_exactly(conn, 2))[0]
            data = recv_exactly(conn, length)
    else:
        with socket.socket(socket.AF_INET6 if ":" in args.server else socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.sendto(message, (args.server, args.port))
            data, _ = udp.recvfrom(65535)
    result = parse_response(data)
    result["id_matches"] = result["id"] == ident
    print(json.dumps(result))


def recv_exactly(conn, count):
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


# ---------------------------------------------------------------- the upstream


def answer(data, zone):
    """An answer from `zone` (name → IPv4), NXDOMAIN otherwise."""
    ident, flags = struct.unpack("!HH", data[:4])
    name, at = read_name(data, 12)
    qtype, qclass = struct.unpack("!HH", data[at:at + 4])
    question = data[12:at + 4]
    address = zone.get(name.lower().rstrip("."))
    records = b""
    count = 0
    rcode = 0
    if address is None:
        rcode = 3
    elif qtype == 1:
        records = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
        count = 1
    header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, count, 0, 0)
    return header + question + records


def serve(args):
    zone = {}
    for item in args.zone:
        name, _, address = item.partition("=")
        zone[name.lower().rstrip(".")] = address
    log = open(args.log, "a") if args.log else sys.stderr

    class UDP(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            try:
                name, _ = read_name(data, 12)
                log.write(f"udp {name}\n")
                log.flush()
                sock.sendto(answer(data, zone), self.client_address)
            except (ValueError, IndexError, struct.error):
                pass

    class TCP(socketserver.BaseRequestHandler):
        def handle(self):
            try:
                length = struct.unpack("!H", recv_exactly(self.request, 2))[0]
                data = recv_exactly(self.request, length)
                name, _ = read_name(data, 12)
                log.write(f"tcp {name}\n")
                log.flush()
                reply = answer(data, zone)
                self.request.sendall(struct.pack("!H", len(reply)) + reply)
            except (ValueError, IndexError, struct.error, ConnectionError, OSError):
                pass

    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer((args.listen, args.port), UDP)
    tcp = socketserver.ThreadingTCPServer((args.listen, args.port), TCP)
    threading.Thread(target=udp.serve_forever, daemon=True).start()
    log.write(f"dns upstream serving on {args.listen}:{args.port}\n")
    log.flush()
    tcp.serve_forever()


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("query")
    q.add_argument("name")
    q.add_argument("type", nargs="?", default="A")
    q.add_argument("--server", default="10.96.0.10")
    q.add_argument("--port", type=int, default=53)
    q.add_argument("--tcp", action="store_true")
    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    s.add_argument("--port", type=int, default=53)
    s.add_argument("--zone", action="append", default=[])
    s.add_argument("--log")
    args = parser.parse_args()
    if args.command == "query":
        query(args)
    else:
        serve(args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
