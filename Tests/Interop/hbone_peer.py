#!/usr/bin/env python3
"""An independent HBONE peer for Ambit's interop tests, built on Python's ssl and h2.

HBONE: mutual TLS 1.3 with ALPN h2, then one HTTP/2 CONNECT stream per tunnelled TCP
connection. Subcommands (each prints one JSON object on its last stdout line):

  check                      is h2 >= 4.4 importable
  client  --connect ...      one CONNECT (or another method), send a payload, half-close,
                             read the reply
  server  --listen ...       accept tunnels, record each request's headers, answer with a
                             status and echo the bytes (END_STREAM echoed as END_STREAM)
  gateway --listen ... --route AUTHORITY=IP:PORT ...
                             a network-gateway stand-in (Istio's east-west gateway is an
                             Envoy istiod configures; it cannot run here): terminate the
                             outer tunnel of double HBONE, record its request, and relay
                             the stream's bytes unread, both ways, to the address routed
                             for its :authority (the destination's HBONE port); 503 for
                             an authority without a route
  flood   --connect ...      open many streams and reset each at once (rapid reset)
  violate --connect ...      send an HTTP/2 protocol violation after the preface
  garbage --connect ...      send bytes that are not TLS at all
  attack  --connect ... --kind rapid-reset|continuation --seconds S
                             a sustained flood: attack, and reconnect each time the
                             server closes the connection, until S seconds have passed
  oversized --connect ...    one CONNECT whose header list is --header-bytes long
  matrix  --connect ... --rows 4x4MiB,8x2MiB
                             per row, one connection with K concurrent CONNECT streams;
                             each sends N random bytes, half-closes, and reads the echo
                             back to its END_STREAM; every stream's bytes are SHA-checked

Test-only code: it trusts the CA file it is given and nothing else.
"""
import argparse
import hashlib
import json
import random
import os
import selectors
import socket
import ssl
import sys
import threading
import time

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
    import h2.errors
    H2_VERSION = getattr(__import__("h2"), "__version__", "0")
except ImportError:  # reported by `check`
    h2 = None
    H2_VERSION = None

STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_FRAME = 1024 * 1024


def emit(obj):
    print(json.dumps(obj), flush=True)


def split_addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def tls_context(args, server):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if not server:
        ctx.check_hostname = False  # SPIFFE peers are named by URI SAN, not host names
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def new_h2(client, header_list):
    config = h2.config.H2Configuration(client_side=client, header_encoding="utf-8", validate_inbound_headers=True)
    conn = h2.connection.H2Connection(config=config)
    # Local settings must be set before the preamble goes out.
    conn.local_settings = h2.settings.Settings(
        client=client,
        initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: header_list,
        },
    )
    # Initial values count as already acknowledged, so h2 never raises its own frame-size
    # limit from them when the peer's ACK arrives: set it here.
    conn.max_inbound_frame_size = MAX_FRAME
    conn.initiate_connection()
    # The connection window only grows by a WINDOW_UPDATE on stream 0.
    conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    return conn


def peer_san(sock):
    cert = sock.getpeercert()
    if not cert:
        return None
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI":
            return value
    return None


def connect_tls(args):
    host, port = split_addr(args.connect)
    raw = socket.create_connection((host, port), timeout=args.timeout)
    ctx = tls_context(args, server=False)
    try:
        sock = ctx.wrap_socket(raw, server_hostname=None)
        # TLS 1.3: a rejected client certificate shows up only on the first read.
        sock.settimeout(args.timeout)
    except (ssl.SSLError, OSError) as error:
        raw.close()
        return None, "handshake failed: %s" % error
    if sock.selected_alpn_protocol() != "h2":
        sock.close()
        return None, "no h2 ALPN"
    return sock, None


def cmd_check(args):
    ok = H2_VERSION is not None and tuple(int(p) for p in H2_VERSION.split(".")[:2]) >= (4, 4)
    emit({"ok": ok, "h2": H2_VERSION})


def cmd_client(args):
    sock, error = connect_tls(args)
    if error:
        emit({"handshake": error})
        return
    result = {"handshake": "ok", "server_san": peer_san(sock)}
    conn = new_h2(True, 16 * 1024)
    stream = conn.get_next_available_stream_id()
    headers = [(":method", args.method), (":authority", args.authority)]
    if args.method != "CONNECT":
        headers += [(":scheme", "https"), (":path", "/")]
    headers += [("forwarded", args.forwarded), ("baggage", "k8s.namespace.name=py")]
    conn.send_headers(stream, headers, end_stream=False)
    body = bytearray()
    status = None
    ended = False
    response_headers = {}
    try:
        sock.sendall(conn.data_to_send())
        while not ended:
            data = sock.recv(65536)
            if not data:
                result["closed"] = True
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    response_headers = dict(event.headers)
                    status = int(response_headers.get(":status", "0"))
                    if status == 200 and args.payload is not None:
                        conn.send_data(stream, args.payload.encode(), end_stream=True)
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    ended = True
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    result["reset"] = int(event.error_code)
                    ended = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    result["goaway"] = int(event.error_code)
                    ended = True
            # Flush after every batch: acknowledgements unblock the sender.
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    except (ssl.SSLError, OSError) as error:
        result["error"] = str(error)
    result.update({"status": status, "headers": response_headers, "body": body.decode(errors="replace")})
    sock.close()
    emit(result)


def serve_connection(sock, args, record_lock):
    conn = new_h2(False, 64 * 1024)
    sock.sendall(conn.data_to_send())
    reset = set()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = dict(event.headers)
                    entry = {"headers": headers, "client_san": peer_san(sock)}
                    with record_lock:
                        with open(args.record, "a") as handle:
                            handle.write(json.dumps(entry) + "\n")
                    conn.send_headers(event.stream_id, [(":status", str(args.status))], end_stream=args.status != 200)
                elif isinstance(event, h2.events.DataReceived):
                    if event.stream_id in reset:
                        continue
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if event.data:
                        conn.send_data(event.stream_id, b"waypoint: " + event.data)
                        if args.reset_after_data >= 0:
                            # Mid-transfer: reset the stream with the given HTTP/2 error code.
                            conn.reset_stream(event.stream_id, error_code=args.reset_after_data)
                            reset.add(event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    if event.stream_id not in reset:
                        conn.end_stream(event.stream_id)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    except (ssl.SSLError, OSError, h2.exceptions.ProtocolError):
        pass
    finally:
        sock.close()


def accept_tls(args, serve):
    """Listens on --listen for --max-seconds; each mutual-TLS connection goes to
    serve(sock, lock) on a thread of its own (the lock guards the --record file)."""
    host, port = split_addr(args.listen)
    ctx = tls_context(args, server=True)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)
    listener.settimeout(0.5)
    emit({"listening": "%s:%d" % listener.getsockname()})
    lock = threading.Lock()
    deadline = time.time() + args.max_seconds
    while time.time() < deadline:
        try:
            raw, _ = listener.accept()
        except socket.timeout:
            continue
        try:
            sock = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            continue
        threading.Thread(target=serve, args=(sock, lock), daemon=True).start()
    listener.close()


def cmd_server(args):
    accept_tls(args, lambda sock, lock: serve_connection(sock, args, lock))


def serve_gateway(sock, args, routes, record_lock):
    """One outer HBONE connection: each CONNECT stream relayed to a TCP connection."""
    conn = new_h2(False, 64 * 1024)
    sock.settimeout(10)
    sock.sendall(conn.data_to_send())
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, None)
    upstreams = {}  # stream id -> socket
    blocked = set()  # stream ids whose upstream waits for window
    read_closed = set()
    remote_ended = set()

    def stop_reading(stream_id):
        up = upstreams.get(stream_id)
        if up is not None and stream_id not in blocked:
            try:
                selector.unregister(up)
            except (KeyError, ValueError):
                pass

    def close_stream(stream_id):
        up = upstreams.pop(stream_id, None)
        blocked.discard(stream_id)
        if up is not None:
            try:
                selector.unregister(up)
            except (KeyError, ValueError):
                pass
            up.close()

    def pump(stream_id):
        up = upstreams.get(stream_id)
        if up is None:
            return
        window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
        if window <= 0:
            stop_reading(stream_id)
            blocked.add(stream_id)
            return
        try:
            data = up.recv(window)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            if data:
                conn.send_data(stream_id, data)
            else:
                selector.unregister(up)
                read_closed.add(stream_id)
                conn.end_stream(stream_id)
                if stream_id in remote_ended:
                    close_stream(stream_id)
        except h2.exceptions.StreamClosedError:
            close_stream(stream_id)

    try:
        while True:
            ready = [key for key, _ in selector.select(timeout=0.05)]
            if sock.pending() and not any(key.data is None for key in ready):
                ready.append(selector.get_key(sock))
            for key in ready:
                if key.data is not None:
                    pump(key.data)
                    continue
                data = sock.recv(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = dict(event.headers)
                        target = routes.get(headers.get(":authority", ""))
                        status = 200
                        up = None
                        if target is None:
                            status = 503
                        else:
                            try:
                                # From the gateway's own address, as a gateway pod's would be.
                                up = socket.create_connection(target, timeout=5, source_address=(split_addr(args.listen)[0], 0))
                                up.setblocking(False)
                            except OSError:
                                status = 503
                        with record_lock:
                            with open(args.record, "a") as handle:
                                handle.write(json.dumps({"headers": headers, "client_san": peer_san(sock), "status": status}) + "\n")
                        conn.send_headers(event.stream_id, [(":status", str(status))], end_stream=status != 200)
                        if up is not None:
                            upstreams[event.stream_id] = up
                            selector.register(up, selectors.EVENT_READ, event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        up = upstreams.get(event.stream_id)
                        if up is not None and event.data:
                            up.setblocking(True)
                            try:
                                up.sendall(event.data)
                            except OSError:
                                conn.reset_stream(event.stream_id, error_code=8)
                                close_stream(event.stream_id)
                                continue
                            up.setblocking(False)
                    elif isinstance(event, h2.events.StreamEnded):
                        remote_ended.add(event.stream_id)
                        up = upstreams.get(event.stream_id)
                        if up is not None:
                            try:
                                up.shutdown(socket.SHUT_WR)
                            except OSError:
                                pass
                            if event.stream_id in read_closed:
                                close_stream(event.stream_id)
                    elif isinstance(event, h2.events.StreamReset):
                        close_stream(event.stream_id)
                    elif isinstance(event, h2.events.WindowUpdated):
                        waiting = list(blocked) if event.stream_id == 0 else [event.stream_id]
                        for stream_id in waiting:
                            if stream_id in blocked and stream_id in upstreams:
                                blocked.discard(stream_id)
                                selector.register(upstreams[stream_id], selectors.EVENT_READ, stream_id)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        return
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    except (ssl.SSLError, OSError, h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
        pass
    finally:
        for stream_id in list(upstreams):
            close_stream(stream_id)
        sock.close()


def cmd_gateway(args):
    routes = {}
    for entry in args.route:
        authority, _, target = entry.partition("=")
        routes[authority] = split_addr(target)
    accept_tls(args, lambda sock, lock: serve_gateway(sock, args, routes, lock))


def read_until_closed(sock, conn, seconds):
    """Reads until the peer closes or `seconds` pass; returns (closed, goaway code)."""
    goaway = None
    end = time.time() + seconds
    sock.settimeout(0.5)
    while time.time() < end:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except (ssl.SSLError, OSError):
            return True, goaway
        if not data:
            return True, goaway
        if conn is not None:
            try:
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaway = int(event.error_code)
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
            except h2.exceptions.ProtocolError:
                pass
            except (ssl.SSLError, OSError):
                return True, goaway
    return False, goaway


def cmd_flood(args):
    sock, error = connect_tls(args)
    if error:
        emit({"handshake": error})
        return
    conn = new_h2(True, 16 * 1024)
    sent = 0
    try:
        sock.sendall(conn.data_to_send())
        for _ in range(args.streams):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, [(":method", "CONNECT"), (":authority", args.authority)])
            conn.reset_stream(stream, error_code=h2.errors.ErrorCodes.CANCEL)
            sent += 1
            if sent % 50 == 0:
                sock.sendall(conn.data_to_send())
        sock.sendall(conn.data_to_send())
    except (ssl.SSLError, OSError, h2.exceptions.ProtocolError):
        pass
    closed, goaway = read_until_closed(sock, conn, args.timeout)
    emit({"handshake": "ok", "streams_sent": sent, "closed": closed, "goaway": goaway})


def cmd_violate(args):
    sock, error = connect_tls(args)
    if error:
        emit({"handshake": error})
        return
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    if args.kind == "data-on-stream-0":
        bad = b"\x00\x00\x04\x00\x00\x00\x00\x00\x00" + b"oops"
    elif args.kind == "window-update-zero":
        bad = b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
    else:  # a frame length beyond SETTINGS_MAX_FRAME_SIZE
        bad = b"\xff\xff\xff\x00\x00\x00\x00\x00\x01"
    try:
        sock.sendall(preface + settings + bad)
    except (ssl.SSLError, OSError):
        pass
    closed, _ = read_until_closed(sock, None, args.timeout)
    emit({"handshake": "ok", "closed": closed})


def cmd_garbage(args):
    host, port = split_addr(args.connect)
    sock = socket.create_connection((host, port), timeout=args.timeout)
    try:
        sock.sendall(os.urandom(4096))
    except OSError:
        pass
    closed, _ = read_until_closed(sock, None, args.timeout)
    emit({"closed": closed})


def raw_frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def attack_once(args, deadline):
    """One connection's worth of attack; returns (frames sent, closed by server, seconds open)."""
    opened = time.time()
    sock, error = connect_tls(args)
    if error:
        return 0, False, 0.0, error
    sent = 0
    conn = None
    try:
        if args.kind == "rapid-reset":
            conn = new_h2(True, 16 * 1024)
            sock.sendall(conn.data_to_send())
            while True:  # at least one batch, so every connection is an attack
                for _ in range(50):
                    stream = conn.get_next_available_stream_id()
                    conn.send_headers(stream, [(":method", "CONNECT"), (":authority", args.authority)])
                    conn.reset_stream(stream, error_code=h2.errors.ErrorCodes.CANCEL)
                    sent += 1
                sock.sendall(conn.data_to_send())
                if time.time() >= deadline and sent >= 1000:
                    break
        else:
            # HEADERS without END_HEADERS, then CONTINUATION frames that never end the block.
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + raw_frame(4, 0, 0, b""))
            sock.sendall(raw_frame(1, 0, 1, b"\x00\x01a\x01b"))
            sent += 1
            chunk = raw_frame(9, 0, 1, b"\x00\x01a\x01b" * 4) * 64
            while True:  # at least one batch, so every connection is an attack
                sock.sendall(chunk)
                sent += 64
                if time.time() >= deadline:
                    break
    except (ssl.SSLError, OSError, h2.exceptions.ProtocolError, h2.exceptions.TooManyStreamsError):
        pass
    closed, _ = read_until_closed(sock, None, max(0.5, min(args.timeout, deadline - time.time() + 5)))
    try:
        sock.close()
    except OSError:
        pass
    return sent, closed, time.time() - opened, None


def cmd_attack(args):
    deadline = time.time() + args.seconds
    connections = closed = frames = 0
    longest = 0.0
    errors = []
    # No new connection in the last half second: it would end before it is an attack.
    while time.time() < deadline - 0.5:
        sent, was_closed, seconds, error = attack_once(args, deadline)
        if error:
            errors.append(error)
            time.sleep(0.05)
            if len(errors) > 100:
                break
            continue
        connections += 1
        frames += sent
        closed += 1 if was_closed else 0
        longest = max(longest, seconds)
    emit({"connections": connections, "closed_by_server": closed, "frames": frames,
          "longest_connection_seconds": round(longest, 3), "errors": errors[:3], "error_count": len(errors)})


def cmd_oversized(args):
    sock, error = connect_tls(args)
    if error:
        emit({"handshake": error})
        return
    conn = new_h2(True, 16 * 1024)
    stream = conn.get_next_available_stream_id()
    headers = [(":method", "CONNECT"), (":authority", args.authority),
               ("x-padding", "p" * args.header_bytes)]
    result = {"handshake": "ok"}
    try:
        sock.sendall(conn.data_to_send())
        if args.wait_settings:
            # The server's SETTINGS (its header list limit among them) apply once we ACK them.
            settled = False
            while not settled:
                data = sock.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        settled = True
                sock.sendall(conn.data_to_send())
            time.sleep(0.2)
        conn.send_headers(stream, headers, end_stream=False)
        sock.sendall(conn.data_to_send())
        end = time.time() + args.timeout
        while time.time() < end and "status" not in result:
            data = sock.recv(65536)
            if not data:
                result["closed"] = True
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    result["status"] = int(dict(event.headers).get(":status", "0"))
                elif isinstance(event, h2.events.StreamReset):
                    result["reset"] = int(event.error_code)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    result["goaway"] = int(event.error_code)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            if "reset" in result or "goaway" in result:
                break
    except (ssl.SSLError, OSError, h2.exceptions.ProtocolError) as error:
        result["error"] = str(error)
    if "status" not in result and "closed" not in result:
        result["closed"], _ = read_until_closed(sock, conn, args.timeout)
    sock.close()
    emit(result)


def parse_size(text):
    """`512KiB`, `4MiB`, `1GiB` or a plain byte count."""
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "k": 1 << 10, "m": 1 << 20, "": 1}
    match = __import__("re").fullmatch(r"(\d+)\s*([a-zA-Z]*)", text.strip())
    if not match or match.group(2).lower() not in units:
        raise ValueError("bad size %r" % text)
    return int(match.group(1)) * units[match.group(2).lower()]


def parse_rows(text):
    rows = []
    for item in text.split(","):
        count, _, size = item.strip().lower().partition("x")
        rows.append((int(count), parse_size(size)))
    return rows


class EchoStream:
    __slots__ = ("id", "payload", "sent", "want", "hasher", "received", "status", "local_end", "remote_end",
                 "reset", "first_mismatch")

    def __init__(self, stream_id, payload):
        self.id = stream_id
        self.payload = payload
        self.sent = 0
        self.want = hashlib.sha256(payload).hexdigest()
        self.hasher = hashlib.sha256()
        self.received = 0
        self.status = None
        self.local_end = False
        self.remote_end = False
        self.reset = None
        self.first_mismatch = None

    @property
    def finished(self):
        return self.reset is not None or self.remote_end or (self.status is not None and self.status != 200)

    def verdict(self):
        digest = self.hasher.hexdigest()
        ok = (self.status == 200 and self.local_end and self.remote_end and self.reset is None
              and self.received == len(self.payload) and digest == self.want)
        return {"stream": self.id, "ok": ok, "status": self.status, "sent": self.sent, "received": self.received,
                "size": len(self.payload), "sha_ok": digest == self.want, "end_stream_sent": self.local_end,
                "end_stream_received": self.remote_end, "reset": self.reset, "first_mismatch": self.first_mismatch}


def matrix_row(args, count, size, seed):
    """One connection, `count` concurrent echo streams of `size` bytes each."""
    started = time.time()
    sock, error = connect_tls(args)
    if error:
        return {"streams": count, "bytes": size, "ok": False, "error": error}
    conn = new_h2(True, 16 * 1024)
    rng = random.Random(seed)
    streams = {}
    for _ in range(count):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [(":method", "CONNECT"), (":authority", args.authority),
                                      ("forwarded", 'for="127.0.0.1:40000"')], end_stream=False)
        streams[stream_id] = EchoStream(stream_id, rng.randbytes(size))
    result = {"streams": count, "bytes": size}
    deadline = started + args.timeout
    sock.settimeout(0.05)
    try:
        sock.sendall(conn.data_to_send())
        while not all(s.finished for s in streams.values()):
            if time.time() > deadline:
                result["error"] = "timed out after %.0f s" % args.timeout
                break
            # Send what the peer's windows allow, then END_STREAM once a stream's bytes are out.
            for s in streams.values():
                if s.status != 200 or s.local_end or s.reset is not None:
                    continue
                while s.sent < size:
                    window = min(conn.local_flow_control_window(s.id), conn.max_outbound_frame_size)
                    chunk = min(window, size - s.sent)
                    if chunk <= 0:
                        break
                    conn.send_data(s.id, s.payload[s.sent:s.sent + chunk])
                    s.sent += chunk
                if s.sent == size:
                    conn.end_stream(s.id)
                    s.local_end = True
            out = conn.data_to_send()
            if out:
                sock.settimeout(args.timeout)
                sock.sendall(out)
                sock.settimeout(0.05)
            try:
                data = sock.recv(1 << 20)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            if not data:
                result["closed"] = True
                break
            for event in conn.receive_data(data):
                s = streams.get(getattr(event, "stream_id", None))
                if isinstance(event, h2.events.ResponseReceived) and s:
                    s.status = int(dict(event.headers).get(":status", "0"))
                elif isinstance(event, h2.events.DataReceived) and s:
                    chunk = event.data
                    expected = s.payload[s.received:s.received + len(chunk)]
                    if s.first_mismatch is None and chunk != expected:
                        s.first_mismatch = s.received + next(
                            (i for i, (a, b) in enumerate(zip(chunk, expected)) if a != b), min(len(chunk), len(expected)))
                    s.hasher.update(chunk)
                    s.received += len(chunk)
                    try:
                        conn.acknowledge_received_data(event.flow_controlled_length, s.id)
                    except h2.exceptions.StreamClosedError:
                        pass
                elif isinstance(event, h2.events.StreamEnded) and s:
                    s.remote_end = True
                elif isinstance(event, h2.events.StreamReset) and s:
                    s.reset = int(event.error_code)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    result["goaway"] = int(event.error_code)
            out = conn.data_to_send()
            if out:
                sock.settimeout(args.timeout)
                sock.sendall(out)
                sock.settimeout(0.05)
    except (ssl.SSLError, OSError, h2.exceptions.ProtocolError) as error:
        result["error"] = "%s: %s" % (type(error).__name__, error)
    try:
        sock.close()
    except OSError:
        pass
    verdicts = [s.verdict() for s in streams.values()]
    result["failed"] = [v for v in verdicts if not v["ok"]]
    result["ok"] = not result["failed"] and "error" not in result and "goaway" not in result
    result["seconds"] = round(time.time() - started, 3)
    return result


def cmd_matrix(args):
    rows = parse_rows(args.rows)
    results = []
    for repeat in range(args.repeat):
        for index, (count, size) in enumerate(rows):
            row = matrix_row(args, count, size, seed=(repeat << 16) + index)
            row["repeat"] = repeat
            results.append(row)
    emit({"ok": all(r["ok"] for r in results), "rows": results,
          "failed_rows": sum(1 for r in results if not r["ok"])})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check")
    for name in ("client", "flood", "violate", "garbage", "attack", "oversized", "matrix"):
        p = sub.add_parser(name)
        p.add_argument("--connect", required=True)
        p.add_argument("--cert")
        p.add_argument("--key")
        p.add_argument("--ca")
        p.add_argument("--authority", default="")
        p.add_argument("--method", default="CONNECT")
        p.add_argument("--forwarded", default='for="127.0.0.1:40000"')
        p.add_argument("--payload")
        p.add_argument("--streams", type=int, default=2000)
        p.add_argument("--kind", default="oversized-frame")
        p.add_argument("--timeout", type=float, default=10)
        p.add_argument("--seconds", type=float, default=5)
        p.add_argument("--header-bytes", type=int, default=100000)
        p.add_argument("--wait-settings", action="store_true")
        p.add_argument("--rows", default="4x4MiB")
        p.add_argument("--repeat", type=int, default=1)
    p = sub.add_parser("server")
    p.add_argument("--listen", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--reset-after-data", type=int, default=-1,
                   help="reset each stream with this HTTP/2 error code after echoing its first DATA")
    p.add_argument("--max-seconds", type=float, default=120)
    p = sub.add_parser("gateway")
    p.add_argument("--listen", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--route", action="append", default=[], help="AUTHORITY=IP:PORT; repeatable")
    p.add_argument("--max-seconds", type=float, default=120)
    args = parser.parse_args()
    {"check": cmd_check, "client": cmd_client, "server": cmd_server, "flood": cmd_flood,
     "violate": cmd_violate, "garbage": cmd_garbage, "attack": cmd_attack, "oversized": cmd_oversized,
     "matrix": cmd_matrix, "gateway": cmd_gateway}[args.command](args)


if __name__ == "__main__":
    if H2_VERSION is not None:
        import h2.exceptions
    main()
