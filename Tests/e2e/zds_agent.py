"""A stand-in for istio-cni's node agent on the ZDS side: it listens on a SOCK_SEQPACKET
unix socket (as istio-cni does at /var/run/ztunnel/ztunnel.sock), waits for the node
proxy's `ZdsHello`, sends its snapshot (`AddWorkload` with the pod's network namespace
attached by SCM_RIGHTS, one pod at a time, each waiting for its `Ack`, then
`SnapshotSent`), and then pods as the test adds and deletes them. Messages are
istio.workload.zds protobufs (ztunnel's proto/zds.proto), encoded here by hand: the
messages are small and this keeps the suite free of a protobuf dependency.

It is a stand-in (istio-cni needs Kubernetes); it speaks the real protocol.
"""

import os
import socket
import threading
import time

# ---------------------------------------------------------------- protobuf, by hand


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, payload):
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string(number, text):
    return _field(number, text.encode()) if text else b""


def add_workload(uid, name, namespace, service_account):
    info = _string(1, name) + _string(2, namespace) + _string(3, service_account)
    return _field(1, _string(1, uid) + _field(2, info))  # WorkloadRequest.add = 1


def keep_workload(uid):
    return _field(5, _string(1, uid))  # WorkloadRequest.keep = 5, KeepWorkload.uid = 1


def del_workload(uid):
    return _field(2, _string(2, uid))  # WorkloadRequest.del = 2, DelWorkload.uid = 2


def snapshot_sent():
    return _field(3, b"")  # WorkloadRequest.snapshot_sent = 3


def _read_varint(data, at):
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data):
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(data, at)
        elif wire == 2:
            length, at = _read_varint(data, at)
            value, at = data[at:at + length], at + length
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield number, value


def parse_ack(data):
    """WorkloadResponse{ack: Ack{error}} → the error text ("" on success)."""
    for number, value in _fields(data):
        if number == 1:
            for inner, text in _fields(value):
                if inner == 1:
                    return text.decode()
            return ""
    raise ValueError(f"not an Ack: {data!r}")


def parse_hello(data):
    """ZdsHello{version} → the version number."""
    for number, value in _fields(data):
        if number == 1:
            return value
    return 0


# ---------------------------------------------------------------- the agent


class Pod:
    def __init__(self, uid, name, namespace, service_account, netns_path):
        self.uid, self.name, self.namespace, self.service_account = uid, name, namespace, service_account
        self.netns_path = netns_path


class FakeIstioCNI:
    """One node's agent. `pods` are sent in every snapshot; `add`/`delete` change them
    live. Every connection, message sent and ack received is recorded (`log`)."""

    def __init__(self, path):
        self.path = path
        self.pods = {}
        self.lock = threading.Condition()
        self.connection = None
        self.connections = 0
        self.snapshots_done = 0
        self.acks = []  # (message kind, uid, error) for every ack received
        self.log = []
        self.closed = False
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True, name=f"zds {path}")
        self.thread.start()

    def _note(self, text):
        with self.lock:
            self.log.append(f"{time.time():.3f} {text}")

    def _serve(self):
        while not self.closed:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            connection.settimeout(10)
            with self.lock:
                old = self.connection
                self.connection = connection
                self.connections += 1
            if old is not None:
                try:
                    old.close()
                except OSError:
                    pass
            try:
                hello = connection.recv(1024)
                if not hello:
                    raise ConnectionError("closed before its hello")
                self._note(f"connection {self.connections}: hello version {parse_hello(hello)}")
                with self.lock:
                    snapshot = list(self.pods.values())
                for pod in snapshot:
                    self._send_add(connection, pod)
                error = self._exchange(connection, snapshot_sent(), [], "snapshot", "")
                self._note(f"snapshot acked: {error!r}")
                with self.lock:
                    self.snapshots_done += 1
                    self.lock.notify_all()
            except (OSError, ConnectionError, ValueError) as error:
                self._note(f"connection {self.connections} failed during the snapshot: {error}")

    def _exchange(self, connection, message, fds, kind, uid):
        """Sends one message (with `fds`) and waits for its ack; returns the ack's error."""
        if fds:
            socket.send_fds(connection, [message], fds)
        else:
            connection.send(message)
        data = connection.recv(1024)
        if not data:
            raise ConnectionError(f"closed instead of acking {kind} {uid}")
        error = parse_ack(data)
        with self.lock:
            self.acks.append((kind, uid, error))
            self.lock.notify_all()
        return error

    def _send_add(self, connection, pod):
        fd = os.open(pod.netns_path, os.O_RDONLY)
        try:
            error = self._exchange(
                connection, add_workload(pod.uid, pod.name, pod.namespace, pod.service_account), [fd], "add", pod.uid)
        finally:
            os.close(fd)
        self._note(f"add {pod.uid} acked: {error!r}")
        return error

    # ------------------------------------------------------------ what a test does

    def wait_connected(self, snapshots=1, timeout=30):
        deadline = time.time() + timeout
        with self.lock:
            while self.snapshots_done < snapshots:
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"{self.path}: {self.snapshots_done} snapshots done, wanted {snapshots}; "
                                       f"log: {self.log[-10:]}")
                self.lock.wait(left)

    def live(self):
        with self.lock:
            if self.connection is None:
                raise ConnectionError(f"{self.path}: no proxy connected")
            return self.connection

    def add(self, pod, send=True):
        """A new pod: remembered for snapshots and, when `send`, sent now; returns the ack's error."""
        with self.lock:
            self.pods[pod.uid] = pod
        if not send:
            return None
        return self._send_add(self.live(), pod)

    def delete(self, uid):
        with self.lock:
            self.pods.pop(uid, None)
        error = self._exchange(self.live(), del_workload(uid), [], "del", uid)
        self._note(f"del {uid} acked: {error!r}")
        return error

    def send_raw(self, message, fds=(), kind="raw"):
        """Sends anything (a protocol violation); returns the ack's error, or None when the
        proxy closed the connection without one."""
        try:
            return self._exchange(self.live(), message, list(fds), kind, "")
        except (ConnectionError, OSError):
            return None

    def close(self):
        self.closed = True
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            if self.connection is not None:
                try:
                    self.connection.close()
                except OSError:
                    pass
        try:
            os.unlink(self.path)
        except OSError:
            pass
