#!/usr/bin/env python3
"""The harness of Ambit's fault tests (faults.py) and load scenarios (load.py).

Two real `ambit run` processes on loopback, an echo backend and an epoll client engine:

    clients ──SOCKS5──▶ node-a ══HBONE (mTLS, HTTP/2 CONNECT)══▶ node-b ──TCP──▶ echo backend
    <ip>.10             socks <ip>.1                  <ip>.20:15008        <ip>.20:9000

- node-a serves SOCKS5 on <ip>.1 and owns the client workload <ip>.10 (clients bind their
  sockets to it, which is how node-a knows their identity);
- node-b owns the server workload <ip>.20 and listens for HBONE on <ip>.20:15008;
- the echo backend (this file run as `pair.py echo IP PORT`, a separate process) echoes
  every byte and passes a half-close on once it has echoed everything.

Every client connection sends bytes from a fixed random pattern at its own offset and
checks each byte that comes back against it, so a lost, duplicated or corrupted byte is
seen where it happens.

Nothing here needs network namespaces; raising RLIMIT_NOFILE past the hard limit needs
root. `<ip>` and the fixed admin ports come from a `Layout` (the fault tests use
127.0.40.x and ports 17000–17199, the load scenarios 127.0.41.x and 17200–17399, so both
can run at once).
"""

import errno
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

PATTERN_SIZE = 1 << 20
_PATTERN = os.urandom(PATTERN_SIZE)
_PATTERN2 = _PATTERN + _PATTERN


def pattern(offset, count):
    """`count` (≤ 1 MiB) bytes of the pattern starting at stream offset `offset`."""
    start = offset % PATTERN_SIZE
    return _PATTERN2[start:start + count]


def raise_fd_limit(want=1 << 20):
    """Raises RLIMIT_NOFILE (soft and hard; children inherit it) as far as the kernel allows."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = want
    target = min(want, ceiling)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
    except (ValueError, OSError):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- process figures

def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# ---------------------------------------------------------------- the two nodes

class Layout:
    """Addresses and ports of one pair."""

    def __init__(self, prefix, port_base):
        self.prefix = prefix
        self.socks = (f"{prefix}.1", port_base + 80)
        self.client_ip = f"{prefix}.10"
        self.server_ip = f"{prefix}.20"
        self.echo_port = 9000
        self.ports = {"node-a": port_base, "node-b": port_base + 100}

    def admin(self, node):
        return self.ports[node]

    def readiness(self, node):
        return self.ports[node] + 21

    def telemetry(self, node):
        return self.ports[node] + 20


class Failure(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise Failure(message)


class Pair:
    """Two `ambit run` node proxies and an echo backend, all on loopback."""

    def __init__(self, ambit, workdir, layout, drain_deadline="3s", log_level="notice", threads=None,
                 hbone_extra=""):
        self.ambit = ambit
        self.dir = workdir
        self.layout = layout
        self.drain_deadline = drain_deadline
        self.log_level = log_level
        self.threads = threads
        self.hbone_extra = hbone_extra
        self.nodes = {}  # name -> Popen
        self.echo = None
        self.echo_stats_path = os.path.join(workdir, "echo-stats.json")

    # ------------------------------------------------------------ setup
    def write_config(self):
        run([self.ambit, "ca", "init", "--out", os.path.join(self.dir, "ca")])
        L = self.layout
        with open(os.path.join(self.dir, "mesh.yaml"), "w") as f:
            f.write(f"""workloads:
- {{uid: rel//v1/Pod/default/client, name: client, namespace: default, serviceAccount: client,
   workloadIps: ["{L.client_ip}"], protocol: HBONE, node: node-a}}
- {{uid: rel//v1/Pod/default/server, name: server, namespace: default, serviceAccount: server,
   workloadIps: ["{L.server_ip}"], protocol: HBONE, node: node-b}}
""")
        for node in ["node-a", "node-b"]:
            socks = (f'{{address: "{L.socks[0]}:{L.socks[1]}", handshakeTimeout: 10s}}' if node == "node-a"
                     else "{enabled: false}")
            threads = f", threads: {self.threads}" if self.threads else ""
            with open(os.path.join(self.dir, f"{node}.yaml"), "w") as f:
                f.write(f"""node: {{name: {node}, drainDeadline: {self.drain_deadline}{threads}}}
admin: {{address: "127.0.0.1:{L.admin(node)}", readinessAddress: "127.0.0.1:{L.readiness(node)}"}}
logging: {{level: {self.log_level}}}
plugins:
  - id: local-config
    config: {{path: mesh.yaml}}
  - id: certificates
    config: {{backend: {{local: {{caDirectory: ca}}}}}}
  - id: authorization
  - id: capture
    config: {{socks5: {socks}}}
  - id: hbone
    config: {{{self.hbone_extra}}}
  - id: telemetry
    config: {{address: "127.0.0.1:{L.telemetry(node)}"}}
""")

    def start_echo(self):
        log = open(os.path.join(self.dir, "echo.log"), "a")
        self.echo = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "echo", self.layout.server_ip, str(self.layout.echo_port),
             self.echo_stats_path], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection((self.layout.server_ip, self.layout.echo_port), timeout=1).close()
                return
            except OSError:
                if self.echo.poll() is not None:
                    raise Failure(f"echo backend exited {self.echo.returncode}")
                time.sleep(0.05)
        raise Failure("echo backend did not start")

    def start_node(self, node):
        log = open(os.path.join(self.dir, f"{node}.log"), "a")
        process = subprocess.Popen([self.ambit, "run", "--manifest", os.path.join(self.dir, f"{node}.yaml")],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.nodes[node] = process
        return process

    def start(self):
        self.write_config()
        self.start_echo()
        for node in ["node-a", "node-b"]:
            self.start_node(node)
        for node in ["node-a", "node-b"]:
            self.wait_ready(node)

    def pid(self, node):
        return self.nodes[node].pid

    def echo_stats(self):
        """How the echo backend's connections ended so far: {"eof": n, "reset": n, "error": n}
        (written by the backend at most 0.2 s after a change)."""
        try:
            with open(self.echo_stats_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"eof": 0, "reset": 0, "error": 0}

    # ------------------------------------------------------------ state
    def http(self, port, path, method="GET", timeout=5):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, str(error)

    def ready(self, node):
        code, body = self.http(self.layout.readiness(node), "/healthz/ready", timeout=2)
        return code == 200, body.strip()

    def wait_ready(self, node, timeout=60):
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            process = self.nodes.get(node)
            if process is not None and process.poll() is not None:
                raise Failure(f"{node} exited with {process.returncode}:\n{self.log_tail(node)}")
            ok, last = self.ready(node)
            if ok:
                return
            time.sleep(0.1)
        raise Failure(f"{node} not ready after {timeout}s: {last}\n{self.log_tail(node)}")

    def open_connections(self, node):
        """The node's open proxied connections, from /config_dump (None if it does not answer)."""
        code, body = self.http(self.layout.admin(node), "/config_dump", timeout=20)
        if code != 200:
            return None
        return len(json.loads(body)["connections"])

    def log_tail(self, node, lines=30):
        try:
            with open(os.path.join(self.dir, f"{node}.log")) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------ stopping
    def signal(self, node, sig):
        self.nodes[node].send_signal(sig)

    def wait_exit(self, node, timeout):
        """Waits for the node to exit; returns (status, seconds waited) or (None, timeout)."""
        process = self.nodes[node]
        started = time.time()
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, timeout
        self.nodes.pop(node)
        return status, time.time() - started

    def stop(self):
        for process in list(self.nodes.values()) + ([self.echo] if self.echo else []):
            if process.poll() is None:
                process.kill()
        for process in list(self.nodes.values()) + ([self.echo] if self.echo else []):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.nodes.clear()
        self.echo = None


def run(argv, timeout=60):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise Failure(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def kill_leftovers(marker):
    """SIGKILLs `ambit run` processes and echo backends left by an interrupted run whose
    command line contains `marker` (the work directory prefix or the echo address)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        if marker in text and ("ambit" in text or "pair.py" in text):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------- client engine

CONNECTING, HANDSHAKE, OPEN, ENDED = range(4)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class Conn:
    """One client connection through SOCKS5, with the bytes it sent and verified."""

    __slots__ = ("id", "sock", "fd", "state", "seed", "target", "sent", "verified", "shut", "close_when_sent",
                 "end", "ended_at", "opened_at", "started", "reply", "corrupt", "group", "data", "want_out")

    def __init__(self, ident, group=None):
        self.id = ident
        self.group = group
        self.sock = None
        self.fd = -1
        self.state = CONNECTING
        self.seed = (ident * 7919) % PATTERN_SIZE
        self.target = 0  # bytes the client wants to have sent
        self.sent = 0
        self.verified = 0
        self.shut = False
        self.close_when_sent = False
        self.end = None  # "eof", "reset", "refused:<reply>", "error:<name>", "closed" (by us)
        self.ended_at = None
        self.opened_at = None
        self.started = None
        self.reply = b""
        self.corrupt = None
        self.data = None  # scenario state
        self.want_out = False

    @property
    def outstanding(self):
        """Bytes sent and not echoed back yet."""
        return self.sent - self.verified

    def send(self, count):
        """Queues `count` more pattern bytes."""
        self.target += count

    def finish(self):
        """Half-closes once everything queued is sent."""
        self.close_when_sent = True


class Engine:
    """Non-blocking SOCKS5 clients on one epoll: thousands of connections in one thread."""

    def __init__(self, layout, on_open=None, on_end=None):
        self.layout = layout
        self.on_open = on_open  # called with each connection once its tunnel is up
        self.on_end = on_end  # called with each connection once it ended
        self.epoll = select.epoll()
        self.conns = {}  # fd -> Conn
        self.next_id = 0
        self.handshaking = 0  # connections in their TCP or SOCKS5 handshake
        self.buffer = bytearray(256 * 1024)
        request_ip = socket.inet_aton(layout.server_ip)
        # Greeting (no authentication) and CONNECT in one write; the proxy parses them in any split.
        self.hello = b"\x05\x01\x00" + b"\x05\x01\x00\x01" + request_ip + struct.pack(">H", layout.echo_port)

    # ------------------------------------------------------------ opening
    def connect(self, group=None):
        conn = Conn(self.next_id, group)
        self.next_id += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Pick the source port at connect time (IP_BIND_ADDRESS_NO_PORT), by the whole
        # 4-tuple, so churn can reuse ports whose earlier connections are in TIME_WAIT.
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((self.layout.client_ip, 0))
        conn.sock = sock
        conn.fd = sock.fileno()
        conn.started = time.monotonic()
        self.handshaking += 1
        code = sock.connect_ex(self.layout.socks)
        if code not in (0, errno.EINPROGRESS):
            self._end(conn, "error:" + errno.errorcode.get(code, str(code)))
            return conn
        self.conns[conn.fd] = conn
        self.epoll.register(conn.fd, select.EPOLLOUT)
        return conn

    def open_many(self, count, group=None, parallel=256, timeout=120, on_open=None):
        """Opens `count` connections, at most `parallel` in their handshakes at once; returns
        them (open or ended) once every one has finished its handshake."""
        made = []
        deadline = time.monotonic() + timeout
        while len(made) < count or self.handshaking > 0:
            while len(made) < count and self.handshaking < parallel:
                made.append(self.connect(group))
            self.poll(0.02)
            if time.monotonic() > deadline:
                raise Failure(f"opening {count} connections took over {timeout}s "
                              f"({sum(1 for c in made if c.state == OPEN)} open)")
        if on_open:
            for conn in made:
                if conn.state == OPEN:
                    on_open(conn)
        return made

    # ------------------------------------------------------------ the loop
    def poll(self, timeout):
        try:
            events = self.epoll.poll(timeout, 4096)
        except InterruptedError:
            return
        for fd, mask in events:
            conn = self.conns.get(fd)
            if conn is None:
                continue
            if conn.state == CONNECTING:
                code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code != 0:
                    self._end(conn, "connect:" + errno.errorcode.get(code, str(code)))
                    continue
                conn.state = HANDSHAKE
                try:
                    conn.sock.send(self.hello)
                except OSError as error:
                    self._fail(conn, error)
                    continue
                self.epoll.modify(fd, select.EPOLLIN)
                continue
            if mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                self._readable(conn)
            if conn.state == OPEN and mask & select.EPOLLOUT:
                self._pump(conn)

    def _readable(self, conn):
        while conn.state in (HANDSHAKE, OPEN):
            try:
                n = conn.sock.recv_into(self.buffer)
            except BlockingIOError:
                return
            except OSError as error:
                self._fail(conn, error)
                return
            if n == 0:
                if conn.state == HANDSHAKE:
                    self._end(conn, "refused:closed")
                else:
                    self._end(conn, "eof")
                return
            data = memoryview(self.buffer)[:n]
            if conn.state == HANDSHAKE:
                conn.reply += bytes(data)
                if len(conn.reply) >= 2 and conn.reply[:2] != b"\x05\x00":
                    self._end(conn, "refused:method")
                    return
                # Then VER REP RSV ATYP BND.ADDR BND.PORT.
                if len(conn.reply) >= 4 and conn.reply[3] != 0:
                    self._end(conn, f"refused:{conn.reply[3]}")
                    return
                if len(conn.reply) < 7:
                    continue
                size = {1: 12, 4: 24}.get(conn.reply[5], 9 + conn.reply[6])
                if len(conn.reply) < size:
                    continue
                rest = conn.reply[size:]
                conn.reply = b""
                conn.state = OPEN
                self.handshaking -= 1
                conn.opened_at = time.monotonic()
                if self.on_open:
                    self.on_open(conn)
                if conn.state != OPEN:
                    return
                self._pump(conn)
                if rest:
                    self._check(conn, rest)
                continue
            self._check(conn, data)
            if n < len(self.buffer):
                return

    def _check(self, conn, data):
        n = len(data)
        if conn.corrupt is None:
            if conn.verified + n > conn.sent:
                conn.corrupt = f"received {conn.verified + n} bytes, sent only {conn.sent}"
            elif data != pattern(conn.seed + conn.verified, n):
                conn.corrupt = f"bytes {conn.verified}..{conn.verified + n} differ from what was sent"
        conn.verified += n

    def pump(self, conn):
        """Writes what is queued (call after `send`/`finish`)."""
        if conn.state == OPEN:
            self._pump(conn)

    def _pump(self, conn):
        while conn.sent < conn.target:
            count = min(conn.target - conn.sent, 256 * 1024)
            try:
                n = conn.sock.send(pattern(conn.seed + conn.sent, count))
            except BlockingIOError:
                break
            except OSError as error:
                self._fail(conn, error)
                return
            conn.sent += n
            if n < count:
                break
        if conn.sent >= conn.target and conn.close_when_sent and not conn.shut:
            conn.shut = True
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError as error:
                self._fail(conn, error)
                return
        want_out = conn.sent < conn.target
        if want_out != conn.want_out:
            conn.want_out = want_out
            self.epoll.modify(conn.fd, select.EPOLLIN | (select.EPOLLOUT if want_out else 0))

    def _fail(self, conn, error):
        code = getattr(error, "errno", None)
        if code in (errno.ECONNRESET, errno.EPIPE):
            self._end(conn, "reset")
        else:
            self._end(conn, "error:" + (errno.errorcode.get(code, str(code)) if code else str(error)))

    def _end(self, conn, how):
        if conn.state == ENDED:
            return
        if conn.state in (CONNECTING, HANDSHAKE):
            self.handshaking -= 1
        conn.state = ENDED
        conn.end = how
        conn.ended_at = time.monotonic()
        if conn.fd in self.conns:
            del self.conns[conn.fd]
            try:
                self.epoll.unregister(conn.fd)
            except OSError:
                pass
        conn.sock.close()
        if self.on_end:
            self.on_end(conn)

    def close(self, conn, reset=False):
        """Closes a connection from the client side (with a reset if asked)."""
        if conn.state == ENDED:
            return
        if reset:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._end(conn, "closed")

    def open_count(self):
        return len(self.conns)


# ---------------------------------------------------------------- echo backend

def echo_server(host, port, stats_path=None):
    """Echoes every byte; after the client's EOF, echoes what is left, then half-closes and
    closes. A reset or error closes the connection. Single-threaded epoll. Counts how
    connections ended (a clean EOF, a reset, another error) in `stats_path`."""
    raise_fd_limit()
    stats = {"eof": 0, "reset": 0, "error": 0}
    dirty = [False, 0.0]

    def ended(how):
        stats[how] += 1
        dirty[0] = True

    def save():
        if not stats_path or not dirty[0] or time.monotonic() - dirty[1] < 0.2:
            return
        dirty[0] = False
        dirty[1] = time.monotonic()
        with open(stats_path + ".tmp", "w") as f:
            json.dump(stats, f)
        os.replace(stats_path + ".tmp", stats_path)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(4096)
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    conns = {}  # fd -> [sock, pending bytearray, eof, reading]
    buffer = bytearray(256 * 1024)
    high = 1 << 20

    def drop(fd):
        entry = conns.pop(fd, None)
        if entry:
            try:
                ep.unregister(fd)
            except OSError:
                pass
            entry[0].close()

    def flush(fd):
        entry = conns[fd]
        sock, pending = entry[0], entry[1]
        while pending:
            try:
                n = sock.send(pending)
            except BlockingIOError:
                break
            except OSError as error:
                if not entry[2]:  # else already counted as a clean end
                    ended("reset" if error.errno in (errno.ECONNRESET, errno.EPIPE) else "error")
                drop(fd)
                return
            del pending[:n]
        if not pending and entry[2]:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            drop(fd)
            return
        reading = len(pending) < high and not entry[2]
        mask = (select.EPOLLIN if reading else 0) | (select.EPOLLOUT if pending else 0)
        if mask != entry[3]:
            entry[3] = mask
            ep.modify(fd, mask)

    while True:
        save()
        for fd, mask in ep.poll(0.2):
            if fd == listener.fileno():
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    except OSError:
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[sock.fileno()] = [sock, bytearray(), False, select.EPOLLIN]
                    ep.register(sock.fileno(), select.EPOLLIN)
                continue
            entry = conns.get(fd)
            if entry is None:
                continue
            if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and not entry[2]:
                while len(entry[1]) < high:
                    try:
                        n = entry[0].recv_into(buffer)
                    except BlockingIOError:
                        break
                    except OSError as error:
                        ended("reset" if error.errno == errno.ECONNRESET else "error")
                        drop(fd)
                        break
                    if n == 0:
                        entry[2] = True
                        ended("eof")
                        break
                    entry[1] += memoryview(buffer)[:n]
                    if n < len(buffer):
                        break
                if fd not in conns:
                    continue
            elif mask & (select.EPOLLHUP | select.EPOLLERR):
                drop(fd)  # after its EOF, already counted
                continue
            flush(fd)


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "echo":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        echo_server(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) == 5 else None)
    else:
        print(__doc__)
        sys.exit(2)
