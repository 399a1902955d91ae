#!/usr/bin/env python3
"""Ambit's in-pod capture end-to-end suite: a small cluster on one machine.

Two "node" network namespaces each run an `ambit run` process; pod namespaces hang off
each node's bridge; the node proxies capture the pods' traffic inside the pods'
namespaces (iptables REDIRECT + listeners opened in the pod), tunnel it over HBONE with
mTLS, and enforce policy. Unmodified clients (curl, iperf3, a small Python echo client)
run inside the pods.

    node1 (ambit)                          node2 (ambit)
    br0 10.71.1.1/24 ── veth 10.71.0.1/30 ── 10.71.0.2/30 ── br0 10.71.2.1/24
     ├─ a1 10.71.1.10 (captured)            ├─ b1 10.71.2.10 (captured)
     ├─ a2 10.71.1.11 (captured)            └─ x  10.71.2.20 (not in the mesh)
     └─ c1 10.71.1.12 (captured at run time through the admin API)

a1 and b1 are dual-stack: fd00:6::1:10 and fd00:6::2:10 too (node1's pods in
fd00:6::1:0/112, node2's in fd00:6::2:0/112, the link between the nodes fd00:6::ff:0/112).

Everything lives in namespaces named ambit-e2e-*; they are removed at the end (and any
left over from an interrupted run at the start). Exit status: 0 when every scenario
passed.
"""

import argparse
import hashlib
import json
import os
import re
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback

PREFIX = "ambit-e2e-"
NODES = {"node1": "10.71.1", "node2": "10.71.2"}
PODS = {
    # name: (node, ip, in mesh, captured from the config)
    "a1": ("node1", "10.71.1.10", True, True),
    "a2": ("node1", "10.71.1.11", True, True),
    "c1": ("node1", "10.71.1.12", True, False),
    "b1": ("node2", "10.71.2.10", True, True),
    "x": ("node2", "10.71.2.20", False, False),
}
# IPv6 addresses of the dual-stack pods, with their node's subnets.
PODS_V6 = {"a1": "fd00:6::1:10", "b1": "fd00:6::2:10"}
NODES_V6 = {"node1": "fd00:6::1", "node2": "fd00:6::2"}
TRUST = "cluster.local"
# A dual-stack service with no endpoints, for the pods' DNS proxies to answer, and the IPv6
# nameserver address the pods query (any address routed out of the pod: the rules redirect
# port 53 to the DNS proxy on [::1]:15053).
DNS_SERVICE = ("dual", "10.96.9.1", "fd00:96::9:1")
NAMESERVER_V6 = "fd00:96::53"
DNS_TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dns_tool.py")
# The nodes' `inPod.backend` (--backend).
BACKEND = "iptables"


def ns(name):
    return PREFIX + name


def netns_path(name):
    return "/var/run/netns/" + ns(name)


def uid(name):
    return "e2e//v1/Pod/default/" + name


def run(*args, check=True, input=None, timeout=60):
    result = subprocess.run(
        list(args), input=input, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def inns(name, *args, **kwargs):
    return run("ip", "netns", "exec", ns(name), *args, **kwargs)


class Failure(Exception):
    pass


def pod_rules(pod, family="4"):
    """The in-pod redirect rules in `pod`'s namespace as text ("" when none), as the backend in use shows them."""
    if BACKEND == "nftables":
        return inns(pod, "nft", "list", "table", "inet", "ambit-inpod", check=False).stdout
    return inns(pod, "iptables-save" if family == "4" else "ip6tables-save").stdout


def has_redirects(text, family="4"):
    """`text` (pod_rules) redirects outbound TCP to 15001 and inbound TCP except HBONE to 15006, for `family`."""
    if BACKEND == "nftables":
        match = "ip daddr != 127.0.0.1" if family == "4" else "ip6 daddr != ::1"
        return (f"{match} tcp dport != 15008" in text and "redirect to :15006" in text
                and f"{match} meta mark" in text and "redirect to :15001" in text)
    loopback = "127.0.0.1/32" if family == "4" else "::1/128"
    return ("-A OUTPUT -j AMBIT_OUTPUT" in text and f"! -d {loopback}" in text and "--to-ports 15001" in text
            and "--to-ports 15006" in text and "! --dport 15008" in text)


def has_any_rules(text):
    return "AMBIT" in text or "ambit-inpod" in text


def expect(condition, message):
    if not condition:
        raise Failure(message)


# ---------------------------------------------------------------- helpers in pods

ECHO_SERVER = r'''
import socket, sys, threading
port = int(sys.argv[1])
ipv6 = len(sys.argv) > 2 and sys.argv[2] == "6"
s = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if ipv6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind(("::" if ipv6 else "0.0.0.0", port)); s.listen(128)
def serve(c):
    try:
        peer = c.getpeername()[0]
        while True:
            data = c.recv(65536)
            if not data: break
            if data == b"whoami\n":
                c.sendall((peer + "\n").encode()); continue
            c.sendall(data)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''

ECHO_CLIENT = r'''
import hashlib, os, socket, sys, json, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pace = float(sys.argv[4]) if len(sys.argv) > 4 else 0
out = {"connected": False, "sent": 0, "received": 0}
try:
    s = socket.create_connection((host, port), timeout=10)
    out["connected"] = True
    if size == 0:
        s.sendall(b"whoami\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk: break
            data += chunk
        out["whoami"] = data.decode().strip()
        out["received"] = len(data)
    else:
        payload = os.urandom(size)
        out["sha_sent"] = hashlib.sha256(payload).hexdigest()
        got = hashlib.sha256(); received = 0
        s.settimeout(30)
        step = 65536 if pace == 0 else 16384
        for i in range(0, size, step):
            s.sendall(payload[i:i + step]); out["sent"] += len(payload[i:i + step])
            if pace: time.sleep(pace)
        s.shutdown(socket.SHUT_WR)
        while True:
            chunk = s.recv(65536)
            if not chunk: break
            got.update(chunk); received += len(chunk)
        out["received"] = received
        out["sha_received"] = got.hexdigest()
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
'''


class Cluster:
    def __init__(self, ambit, workdir, verbose):
        self.ambit = ambit
        self.dir = workdir
        self.verbose = verbose
        self.nodes = {}  # node -> Popen
        self.servers = []  # Popen of pod servers

    # ------------------------------------------------------------ topology
    @staticmethod
    def clean_leftovers():
        listed = run("ip", "netns", "list", check=False).stdout
        for line in listed.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(PREFIX):
                pids = run("ip", "netns", "pids", name, check=False).stdout.split()
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                run("ip", "netns", "del", name, check=False)

    def build(self):
        for node, subnet in NODES.items():
            run("ip", "netns", "add", ns(node))
            inns(node, "ip", "link", "set", "lo", "up")
            inns(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            inns(node, "ip", "link", "add", "br0", "type", "bridge")
            inns(node, "ip", "addr", "add", f"{subnet}.1/24", "dev", "br0")
            inns(node, "ip", "link", "set", "br0", "up")
        # node1 <-> node2
        run("ip", "link", "add", "e2e-n1", "netns", ns("node1"), "type", "veth", "peer", "name", "e2e-n2",
            "netns", ns("node2"))
        inns("node1", "ip", "addr", "add", "10.71.0.1/30", "dev", "e2e-n1")
        inns("node2", "ip", "addr", "add", "10.71.0.2/30", "dev", "e2e-n2")
        inns("node1", "ip", "link", "set", "e2e-n1", "up")
        inns("node2", "ip", "link", "set", "e2e-n2", "up")
        inns("node1", "ip", "route", "add", "10.71.2.0/24", "via", "10.71.0.2")
        inns("node2", "ip", "route", "add", "10.71.1.0/24", "via", "10.71.0.1")
        # IPv6 beside it, for the dual-stack pods.
        for node, subnet in NODES_V6.items():
            inns(node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            inns(node, "ip", "addr", "add", f"{subnet}:1/112", "dev", "br0", "nodad")
        inns("node1", "ip", "addr", "add", "fd00:6::ff:1/112", "dev", "e2e-n1", "nodad")
        inns("node2", "ip", "addr", "add", "fd00:6::ff:2/112", "dev", "e2e-n2", "nodad")
        inns("node1", "ip", "route", "add", "fd00:6::2:0/112", "via", "fd00:6::ff:2")
        inns("node2", "ip", "route", "add", "fd00:6::1:0/112", "via", "fd00:6::ff:1")
        for pod, (node, ip, _, _) in PODS.items():
            self.add_pod_namespace(pod, node, ip)

    def add_pod_namespace(self, pod, node, ip):
        run("ip", "netns", "add", ns(pod))
        inns(pod, "ip", "link", "set", "lo", "up")
        host_side = f"v-{pod}"
        run("ip", "link", "add", "eth0", "netns", ns(pod), "type", "veth", "peer", "name", host_side,
            "netns", ns(node))
        inns(node, "ip", "link", "set", host_side, "master", "br0")
        inns(node, "ip", "link", "set", host_side, "up")
        inns(pod, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        inns(pod, "ip", "link", "set", "eth0", "up")
        inns(pod, "ip", "route", "add", "default", "via", NODES[node] + ".1")
        if pod in PODS_V6:
            inns(pod, "ip", "addr", "add", f"{PODS_V6[pod]}/112", "dev", "eth0", "nodad")
            inns(pod, "ip", "route", "add", "default", "via", NODES_V6[node] + ":1")

    # ------------------------------------------------------------ mesh and nodes
    def write_config(self):
        run(self.ambit, "ca", "init", "--out", os.path.join(self.dir, "ca"))
        lines = ["workloads:"]
        for pod, (node, ip, in_mesh, captured) in PODS.items():
            if not in_mesh:
                continue
            netns = f", netns: {netns_path(pod)}" if captured else ""
            ips = ", ".join(f'"{address}"' for address in [ip] + ([PODS_V6[pod]] if pod in PODS_V6 else []))
            lines.append(
                f"- {{uid: \"{uid(pod)}\", name: {pod}, namespace: default, serviceAccount: {pod}, "
                f"workloadIps: [{ips}], protocol: HBONE, node: {node}, labels: {{app: {pod}}}{netns}}}")
        name, vip4, vip6 = DNS_SERVICE
        lines += [
            "services:",
            f"- {{name: {name}, namespace: default, hostname: {name}.default.svc.cluster.local, "
            f"vips: [\"{vip4}\", \"{vip6}\"], ports: {{80: 8080}}}}",
            "policies:",
            # b1: anyone on 9000/8080/5201; only a1's identity on 9001.
            "- name: b1-ports",
            "  namespace: default",
            "  scope: WorkloadSelector",
            "  selector: {app: b1}",
            "  action: Allow",
            "  rules:",
            "  - [[{destinationPorts: [9000, 8080, 5201]}]]",
            f"  - [[{{principals: [\"{TRUST}/ns/default/sa/a1\"], destinationPorts: [9001]}}]]",
        ]
        with open(os.path.join(self.dir, "mesh.yaml"), "w") as f:
            f.write("\n".join(lines) + "\n")
        for node in NODES:
            manifest = f"""node: {{name: {node}, drainDeadline: 5s}}
admin: {{address: "127.0.0.1:15000", readinessAddress: "0.0.0.0:15021"}}
logging: {{level: info}}
plugins:
  - id: local-config
    config: {{path: mesh.yaml}}
  - id: certificates
    config: {{backend: {{local: {{caDirectory: ca}}}}}}
  - id: authorization
  - id: capture
    config: {{socks5: {{enabled: false}}, inPod: {{enabled: true, backend: {BACKEND}, recheckInterval: 500ms}}}}
  - id: hbone
  - id: telemetry
"""
            with open(os.path.join(self.dir, f"{node}.yaml"), "w") as f:
                f.write(manifest)

    def start_node(self, node):
        log = open(os.path.join(self.dir, f"{node}.log"), "a")
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns(node), self.ambit, "run", "--manifest", os.path.join(self.dir, f"{node}.yaml")],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.nodes[node] = process
        return process

    def ready(self, node):
        result = inns(node, "curl", "-s", "-m", "2", "http://127.0.0.1:15021/healthz/ready", check=False)
        return result.returncode == 0 and result.stdout.strip() == "ready", result.stdout.strip()

    def wait_ready(self, node, timeout=60):
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            process = self.nodes.get(node)
            if process is not None and process.poll() is not None:
                raise Failure(f"{node} exited with {process.returncode}; log:\n{self.log_tail(node)}")
            ok, last = self.ready(node)
            if ok:
                return
            time.sleep(0.2)
        raise Failure(f"{node} not ready after {timeout}s: {last}\n{self.log_tail(node)}")

    def stop_node(self, node, sig=signal.SIGTERM, timeout=30):
        process = self.nodes.pop(node, None)
        if process is None:
            return None
        # `ip netns exec` execs the command, so the pid is ambit's own.
        process.send_signal(sig)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise Failure(f"{node} did not exit within {timeout}s of {sig}")

    def log_tail(self, node, lines=40):
        try:
            with open(os.path.join(self.dir, f"{node}.log")) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def admin(self, node, method, path):
        result = inns(node, "curl", "-s", "-m", "10", "-X", method, "-w", "\n%{http_code}",
                      f"http://127.0.0.1:15000{path}", check=False)
        body, _, code = result.stdout.rpartition("\n")
        return int(code or 0), body

    def metrics(self, node):
        result = inns(node, "curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics", check=False)
        return result.stdout

    # ------------------------------------------------------------ pod programs
    def start_server(self, pod, *args):
        process = subprocess.Popen(["ip", "netns", "exec", ns(pod), *args],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)
        self.servers.append(process)
        return process

    def start_servers(self):
        echo = os.path.join(self.dir, "echo_server.py")
        with open(echo, "w") as f:
            f.write(ECHO_SERVER)
        with open(os.path.join(self.dir, "echo_client.py"), "w") as f:
            f.write(ECHO_CLIENT)
        with open(os.path.join(self.dir, "blob.bin"), "wb") as f:
            f.write(os.urandom(4 * 1024 * 1024))
        for pod in ["a2", "b1", "x"]:
            for port in [9000, 9001]:
                self.start_server(pod, sys.executable, echo, str(port))
        self.start_server("b1", sys.executable, echo, "9000", "6")
        self.start_server("b1", sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0",
                          "--directory", self.dir)
        self.start_server("b1", "iperf3", "-s", "-p", "5201")
        # Wait until each listens (inside its namespace, straight, not through a proxy).
        for pod, port in [("a2", 9000), ("b1", 9000), ("b1", 9001), ("x", 9000), ("b1", 8080), ("b1", 5201)]:
            deadline = time.time() + 15
            while time.time() < deadline:
                if inns(pod, "ss", "-Htln", f"sport = :{port}", check=False).stdout.strip():
                    break
                time.sleep(0.1)
            else:
                raise Failure(f"server on {pod}:{port} did not start")

    def echo(self, pod, host, port, size, pace=0.0, timeout=60):
        result = inns(pod, sys.executable, os.path.join(self.dir, "echo_client.py"), host, str(port), str(size),
                      str(pace), check=False, timeout=timeout)
        try:
            return json.loads(result.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise Failure(f"echo client in {pod} printed {result.stdout!r} {result.stderr!r}")

    def teardown(self):
        for process in list(self.nodes.values()) + self.servers:
            if process.poll() is None:
                process.kill()
        for process in list(self.nodes.values()) + self.servers:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.nodes.clear()
        self.servers.clear()
        self.clean_leftovers()


# ---------------------------------------------------------------- metrics helpers

def series(text, name, **labels):
    """Sum of the samples of metric `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        body, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in body for k, v in labels.items()):
            total += float(value)
    return total


def growth(before, after, name, **labels):
    """How much metric `name` (summed over series with `labels`) grew between two scrapes."""
    return series(after, name, **labels) - series(before, name, **labels)


def principal(pod):
    return f"spiffe://{TRUST}/ns/default/sa/{pod}"


def eventually(check, timeout=10.0, interval=0.2):
    deadline = time.time() + timeout
    while True:
        try:
            return check()
        except Failure:
            if time.time() >= deadline:
                raise
        time.sleep(interval)


# ---------------------------------------------------------------- scenarios

def scenario_rules_installed(c):
    """The proxy installed the in-pod rules in captured pods, and only there."""
    for pod in ["a1", "a2", "b1"]:
        save = pod_rules(pod)
        expect(has_redirects(save), f"{pod}: REDIRECT rules ({BACKEND}) missing:\n{save}")
        rules = inns(pod, "ip", "rule", "show").stdout
        expect("fwmark 0x111/0xfff lookup 100" in rules, f"{pod}: fwmark rule missing:\n{rules}")
        listening = inns(pod, "ss", "-Htln").stdout
        for port in ["15001", "15006", "15008"]:
            expect(f":{port} " in listening, f"{pod}: nothing listens on {port} inside the pod:\n{listening}")
    for pod in ["c1", "x"]:
        save = pod_rules(pod) + pod_rules(pod, "6")
        expect(not has_any_rules(save), f"{pod} is not captured but has rules:\n{save}")
    for node in NODES:
        save = pod_rules(node) + pod_rules(node, "6")
        expect(not has_any_rules(save), f"the node namespace {node} got pod rules:\n{save}")


def scenario_cross_node(c):
    """a1 (node1) -> b1 (node2): captured both ends, HBONE with mTLS, byte-exact; node2 sees a1's identity."""
    before = c.metrics("node2")
    out = c.echo("a1", PODS["b1"][1], 9000, 8 * 1024 * 1024)
    expect(out.get("connected") and "error" not in out, f"echo failed: {out}")
    expect(out["received"] == 8 * 1024 * 1024 and out["sha_received"] == out["sha_sent"],
           f"echo not byte-exact: {out}")
    # The application on b1 sees the client's own address (the proxy dials from inside b1).
    who = c.echo("a1", PODS["b1"][1], 9000, 0)
    expect(who.get("whoami") in (PODS["a1"][1], PODS["b1"][1]), f"whoami: {who}")

    def seen():
        after = c.metrics("node2")
        labels = dict(reporter="destination", source_principal=principal("a1"), destination_workload="b1",
                      connection_security_policy="mutual_tls")
        opened = growth(before, after, "istio_tcp_connections_opened_total", **labels)
        received = growth(before, after, "istio_tcp_received_bytes_total", **labels)
        expect(opened >= 2, f"node2 did not record a1's identity on mTLS connections (opened +{opened})")
        expect(received >= 8 * 1024 * 1024, f"node2 counted {received} bytes from a1, expected >= 8 MiB")
    eventually(seen)
    # The pooled HBONE connection leaves from inside a1 (its socket was made in a1's
    # namespace, with a1's address), not from the node.
    inside = inns("a1", "ss", "-Htn", "state", "established", "dst", f"{PODS['b1'][1]}:15008").stdout
    expect(inside.strip(), "no HBONE connection from inside a1 to b1:15008")
    expect(PODS["a1"][1] in inside, f"HBONE connection does not use a1's address: {inside}")
    on_node = inns("node1", "ss", "-Htn", "state", "established", "dst", f"{PODS['b1'][1]}:15008").stdout
    expect(not on_node.strip(), f"node1's own namespace holds an HBONE connection to b1: {on_node}")
    # curl, unmodified, fetching a 4 MiB file over the captured path.
    with open(os.path.join(c.dir, "blob.bin"), "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    raw = subprocess.run(["ip", "netns", "exec", ns("a1"), "curl", "-s", "-m", "30",
                          f"http://{PODS['b1'][1]}:8080/blob.bin"], capture_output=True, timeout=60)
    expect(raw.returncode == 0 and hashlib.sha256(raw.stdout).hexdigest() == want,
           f"curl: exit {raw.returncode}, body of {len(raw.stdout)} bytes differs from the file")


def scenario_same_node(c):
    """a1 -> a2, both on node1: still through the proxy (inbound HBONE in a2's namespace)."""
    before = c.metrics("node1")
    out = c.echo("a1", PODS["a2"][1], 9000, 1024 * 1024)
    expect(out.get("sha_received") == out.get("sha_sent") and out["received"] == 1024 * 1024, f"echo: {out}")

    def seen():
        after = c.metrics("node1")
        labels = dict(reporter="destination", source_principal=principal("a1"), destination_workload="a2")
        delta = growth(before, after, "istio_tcp_connections_opened_total", **labels)
        expect(delta >= 1, "node1 did not record the same-node connection as inbound with a1's identity")
    eventually(seen)


def scenario_out_of_mesh_client(c):
    """x (no proxy) -> b1: captured as plaintext inbound, no identity; an identity-requiring port refuses it."""
    before = c.metrics("node2")
    out = c.echo("x", PODS["b1"][1], 9000, 256 * 1024)
    expect(out.get("sha_received") == out.get("sha_sent") and out["received"] == 256 * 1024, f"echo: {out}")

    def seen():
        after = c.metrics("node2")
        labels = dict(reporter="destination", destination_workload="b1", source_principal="unknown")
        delta = growth(before, after, "istio_tcp_connections_opened_total", **labels)
        expect(delta >= 1, "node2 did not record x's plaintext connection (no identity)")
    eventually(seen)
    denied = c.echo("x", PODS["b1"][1], 9001, 4096)
    expect(denied.get("received", 0) == 0, f"x reached b1:9001, which requires a1's identity: {denied}")
    allowed = c.echo("a1", PODS["b1"][1], 9001, 4096)
    expect(allowed.get("sha_received") == allowed.get("sha_sent"), f"a1 -> b1:9001 should pass: {allowed}")


def scenario_passthrough(c):
    """a1 -> x (not in the mesh): passed through from inside a1, x sees a1's address."""
    who = c.echo("a1", PODS["x"][1], 9000, 0)
    expect(who.get("whoami") == PODS["a1"][1], f"x should see a1's address: {who}")
    out = c.echo("a1", PODS["x"][1], 9000, 512 * 1024)
    expect(out.get("sha_received") == out.get("sha_sent"), f"echo: {out}")


def scenario_policy_deny(c):
    """a2 -> b1:9001 is denied (only a1 may): the client's connection fails; node2 counts DENY."""
    before = c.metrics("node2")
    out = c.echo("a2", PODS["b1"][1], 9001, 4096)
    expect(out.get("received", 0) == 0, f"a2 got data through a denied connection: {out}")

    def seen():
        after = c.metrics("node2")
        labels = dict(reporter="destination", source_principal=principal("a2"), response_flags="DENY")
        delta = growth(before, after, "istio_tcp_connections_closed_total", **labels)
        expect(delta >= 1, "node2 metrics show no DENY for a2")
    eventually(seen)


def scenario_self_call(c):
    """The proxy's own ports are not a relay target from pods."""
    for pod, host, port in [("a1", "127.0.0.1", 15001), ("a1", PODS["a1"][1], 15006), ("a1", PODS["a1"][1], 15001),
                            ("a1", PODS["b1"][1], 15006), ("a1", PODS["b1"][1], 15001), ("a1", PODS["a2"][1], 15080)]:
        out = c.echo(pod, host, port, 4096)
        expect(out.get("received", 0) == 0, f"{pod} -> {host}:{port} relayed data: {out}")
    # And the proxy is still fine.
    out = c.echo("a1", PODS["b1"][1], 9000, 4096)
    expect(out.get("sha_received") == out.get("sha_sent"), f"echo after self-calls: {out}")


def scenario_iperf(c):
    """iperf3 through the captured cross-node path; its byte count matches node2's metrics."""
    before = c.metrics("node2")
    result = inns("a1", "iperf3", "-c", PODS["b1"][1], "-p", "5201", "-t", "3", "-J", check=False, timeout=60)
    expect(result.returncode == 0, f"iperf3 failed: {result.stdout[-500:]} {result.stderr}")
    report = json.loads(result.stdout)
    sent = int(report["end"]["sum_sent"]["bytes"])
    received = int(report["end"]["sum_received"]["bytes"])
    # iperf3 stops counting at the end of the test while bytes are still in flight (socket
    # buffers, HTTP/2 windows), so the server may have read a little less than was sent.
    expect(0 < received <= sent, f"iperf3 sent {sent}, received {received}")

    def matches():
        after = c.metrics("node2")
        labels = dict(reporter="destination", source_principal=principal("a1"), destination_workload="b1")
        delta = growth(before, after, "istio_tcp_received_bytes_total", **labels)
        # Everything the server read crossed node2; at most what the client wrote plus
        # iperf3's control connection (a few KiB of JSON) did.
        expect(received <= delta <= sent + 64 * 1024,
               f"node2 counted {int(delta)} bytes; iperf3 sent {sent}, its server read {received}")
        return delta
    delta = eventually(matches)
    print(f"    iperf3: sent {sent}, server read {received} bytes in 3 s ({received * 8 / 3 / 1e9:.2f} Gbit/s); "
          f"node2 metrics: {int(delta)} bytes")


def scenario_admin_pod(c):
    """A pod added at run time through the admin API is captured; removing it removes its rules."""
    code, body = c.admin("node1", "POST", f"/pods?uid={uid('c1')}&netns={netns_path('c1')}"
                                         f"&identity={principal('c1')}")
    expect(code == 200 and '"captured"' in body, f"POST /pods answered {code}: {body}")
    save = pod_rules("c1")
    expect(has_redirects(save), f"c1 has no rules after POST /pods:\n{save}")
    ok, pending = c.ready("node1")
    expect(ok, f"node1 not ready after adding c1: {pending}")
    before = c.metrics("node2")
    out = c.echo("c1", PODS["b1"][1], 9000, 65536)
    expect(out.get("sha_received") == out.get("sha_sent"), f"c1 -> b1 echo: {out}")

    def seen():
        after = c.metrics("node2")
        labels = dict(reporter="destination", source_principal=principal("c1"))
        expect(series(after, "istio_tcp_connections_opened_total", **labels) >
               series(before, "istio_tcp_connections_opened_total", **labels), "node2 did not see c1's identity")
    eventually(seen)
    code, body = c.admin("node1", "GET", "/pods")
    expect(code == 200 and uid("c1") in body, f"GET /pods: {code} {body}")
    # A mismatching identity is refused.
    code, body = c.admin("node1", "POST", f"/pods?uid={uid('c1')}&netns={netns_path('c1')}"
                                         f"&identity={principal('a1')}")
    expect(code == 409, f"identity mismatch answered {code}: {body}")
    code, body = c.admin("node1", "DELETE", f"/pods?uid={uid('c1')}")
    expect(code == 200, f"DELETE /pods answered {code}: {body}")
    save = pod_rules("c1") + pod_rules("c1", "6")
    expect(not has_any_rules(save), f"c1 still has rules after DELETE:\n{save}")
    rules = inns("c1", "ip", "rule", "show").stdout
    expect("lookup 100" not in rules, f"c1 still has the fwmark rule:\n{rules}")
    listening = inns("c1", "ss", "-Htln").stdout
    expect(":15001 " not in listening and ":15008 " not in listening, f"c1 still has proxy listeners:\n{listening}")
    # Uncaptured now: c1 reaches b1 directly (b1's proxy takes it as plaintext).
    out = c.echo("c1", PODS["b1"][1], 9000, 4096)
    expect(out.get("sha_received") == out.get("sha_sent"), f"uncaptured c1 -> b1: {out}")
    # A pod that is not in the config cannot be removed through DELETE.
    code, _ = c.admin("node1", "DELETE", f"/pods?uid={uid('a1')}")
    expect(code == 409, f"DELETE of a config pod answered {code}")


def scenario_netns_disappears(c):
    """A pod whose namespace is deleted is released; the others keep working."""
    pod = "d1"
    c.add_pod_namespace(pod, "node1", "10.71.1.13")
    code, body = c.admin("node1", "POST", f"/pods?uid={uid('c1')}&netns={netns_path(pod)}")
    expect(code == 200, f"POST /pods for d1: {code} {body}")
    run("ip", "netns", "del", ns(pod))

    def released():
        code, body = c.admin("node1", "GET", "/pods")
        expect('"gone"' in body, f"d1 not released: {body}")
    eventually(released)
    ok, pending = c.ready("node1")
    expect(ok, f"node1 unready after a pod namespace disappeared: {pending}")
    out = c.echo("a1", PODS["b1"][1], 9000, 65536)
    expect(out.get("sha_received") == out.get("sha_sent"), f"a1 -> b1 after d1 went: {out}")
    c.admin("node1", "DELETE", f"/pods?uid={uid('c1')}")


def scenario_restart_and_drain(c):
    """SIGTERM drains node2 (an in-flight transfer completes); while it is down b1 is unreachable
    (fail closed); once restarted and ready, new connections work."""
    import threading
    result = {}

    def transfer():
        # ~2 MiB paced over ~2 s.
        result.update(c.echo("a1", PODS["b1"][1], 9000, 2 * 1024 * 1024, pace=0.015, timeout=60))
    before = c.metrics("node2")
    thread = threading.Thread(target=transfer)
    thread.start()
    # In flight means node2 relays it: wait for its inbound relay to open (a loaded machine
    # can take longer than a fixed pause to set the tunnel up), then stop node2.
    deadline = time.time() + 15
    while growth(before, c.metrics("node2"), "istio_tcp_connections_opened_total", reporter="destination") < 1:
        expect(time.time() < deadline and thread.is_alive(), f"the transfer never reached node2: {result}")
        time.sleep(0.05)
    code = c.stop_node("node2")
    thread.join(timeout=60)
    expect(result.get("sha_received") == result.get("sha_sent") and result.get("received") == 2 * 1024 * 1024,
           f"in-flight transfer across SIGTERM not complete: { {k: v for k, v in result.items() if k != 'sha_sent'} }")
    expect(code == 0, f"node2 exited {code} after SIGTERM\n{c.log_tail('node2')}")
    down = c.echo("a1", PODS["b1"][1], 9000, 4096)
    expect(down.get("received", 0) == 0, f"b1 reachable while its proxy is down (captured traffic bypassed it): {down}")
    down = c.echo("x", PODS["b1"][1], 9000, 4096)
    expect(down.get("received", 0) == 0, f"x reached b1 while its proxy is down: {down}")
    c.start_node("node2")
    c.wait_ready("node2")
    out = eventually(lambda: ok_echo(c, "a1", "b1"), timeout=15)
    expect(out["received"] == 65536, f"after restart: {out}")


def scenario_ipv6_cross_node(c):
    """a1 -> [b1's IPv6]:9000 across nodes: IPv6 rules and listeners in both pods, HBONE over IPv6 with mTLS."""
    for pod in ["a1", "b1"]:
        save = pod_rules(pod, "6")
        expect(has_redirects(save, "6"), f"{pod}: IPv6 REDIRECT rules ({BACKEND}) missing:\n{save}")
        rules = inns(pod, "ip", "-6", "rule", "show").stdout
        expect("fwmark 0x111/0xfff lookup 100" in rules, f"{pod}: IPv6 fwmark rule missing:\n{rules}")
        listening = inns(pod, "ss", "-Htln6").stdout
        for port in ["15001", "15006", "15008"]:
            expect(f"[::]:{port} " in listening, f"{pod}: nothing listens on [::]:{port}:\n{listening}")
    before = c.metrics("node2")
    out = c.echo("a1", PODS_V6["b1"], 9000, 1024 * 1024)
    expect(out.get("connected") and "error" not in out, f"IPv6 echo failed: {out}")
    expect(out["received"] == 1024 * 1024 and out["sha_received"] == out["sha_sent"], f"IPv6 echo not byte-exact: {out}")
    # DNS over IPv6: istio-cni-style rules redirect port 53 to the pod's DNS proxy on
    # [::1]:15053, over UDP and TCP; it answers the dual-stack service's A and AAAA.
    listening = inns("a1", "ss", "-Hlnu6").stdout + inns("a1", "ss", "-Hlnt6").stdout
    expect("[::1]:15053 " in listening, f"a1: no DNS proxy on [::1]:15053:\n{listening}")
    name, vip4, vip6 = DNS_SERVICE
    for qtype, want in [("A", vip4), ("AAAA", vip6)]:
        for tcp in [False, True]:
            answer = dns_query("a1", name, qtype, NAMESERVER_V6, tcp)
            expect(answer["rcode"] == 0 and [a["value"] for a in answer["answers"]] == [want],
                   f"{qtype} {name} over IPv6 {'TCP' if tcp else 'UDP'}: {answer}")
    # The tunnel is HBONE over IPv6, from inside a1 with its IPv6 address.
    inside = inns("a1", "ss", "-Htn", "state", "established", "dst", f"[{PODS_V6['b1']}]:15008").stdout
    expect(PODS_V6["a1"] in inside, f"no IPv6 HBONE connection from a1 to b1:15008: {inside!r}")

    def seen():
        after = c.metrics("node2")
        labels = dict(reporter="destination", source_principal=principal("a1"), destination_workload="b1",
                      connection_security_policy="mutual_tls")
        received = growth(before, after, "istio_tcp_received_bytes_total", **labels)
        expect(received >= 1024 * 1024, f"node2 counted {received} IPv6 bytes from a1, expected >= 1 MiB")
    eventually(seen)


def dns_query(pod, name, qtype, server, tcp=False):
    """One DNS query from inside the pod (dns_tool.py), its answer as a dict."""
    result = inns(pod, sys.executable, DNS_TOOL, "query", name, qtype, "--server", server,
                  *(["--tcp"] if tcp else []), check=False)
    expect(result.returncode == 0, f"DNS query {name} {qtype} from {pod} failed: {result.stderr[-500:]}")
    return json.loads(result.stdout)


def ok_echo(c, src, dst):
    out = c.echo(src, PODS[dst][1], 9000, 65536)
    if out.get("sha_received") != out.get("sha_sent"):
        raise Failure(f"{src} -> {dst}: {out}")
    return out


SCENARIOS = [
    scenario_rules_installed,
    scenario_cross_node,
    scenario_ipv6_cross_node,
    scenario_same_node,
    scenario_out_of_mesh_client,
    scenario_passthrough,
    scenario_policy_deny,
    scenario_self_call,
    scenario_iperf,
    scenario_admin_pod,
    scenario_netns_disappears,
    scenario_restart_and_drain,
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ambit", required=True, help="the ambit binary")
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--backend", choices=["iptables", "nftables"], default="iptables",
                        help="the nodes' inPod.backend (default iptables)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    global BACKEND
    BACKEND = args.backend
    if os.geteuid() != 0:
        print("Tests/e2e needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    for tool in ["ip", "iptables-save", "ip6tables-save", "curl", "iperf3", "nsenter", "ss"] + (
            ["nft"] if BACKEND == "nftables" else []):
        if shutil.which(tool) is None:
            print(f"Tests/e2e needs `{tool}` (see .ci/run for the packages)", file=sys.stderr)
            return 2

    workdir = tempfile.mkdtemp(prefix="ambit-e2e-")
    cluster = Cluster(os.path.abspath(args.ambit), workdir, args.verbose)

    def interrupted(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, interrupted)

    failures = []
    started = time.time()
    try:
        Cluster.clean_leftovers()
        cluster.build()
        cluster.write_config()
        cluster.start_servers()
        for node in NODES:
            cluster.start_node(node)
        for node in NODES:
            cluster.wait_ready(node)
        print(f"cluster up in {time.time() - started:.1f}s (work directory {workdir})")
        for scenario in SCENARIOS:
            if args.only and args.only not in scenario.__name__:
                continue
            name = scenario.__name__.removeprefix("scenario_")
            t0 = time.time()
            try:
                scenario(cluster)
                print(f"PASS {name} ({time.time() - t0:.1f}s)")
            except Exception as error:  # noqa: BLE001 - every failure is reported, the suite goes on
                failures.append(name)
                print(f"FAIL {name} ({time.time() - t0:.1f}s): {error}")
                if not isinstance(error, Failure) or args.verbose:
                    traceback.print_exc()
                for node in NODES:
                    print(f"  --- {node} log tail ---\n{cluster.log_tail(node, 15)}")
                # Later scenarios need both nodes up.
                for node in NODES:
                    if node not in cluster.nodes or cluster.nodes[node].poll() is not None:
                        cluster.nodes.pop(node, None)
                        cluster.start_node(node)
                        try:
                            cluster.wait_ready(node)
                        except Failure as again:
                            print(f"  {node} cannot be restarted: {again}")
    except KeyboardInterrupt:
        failures.append("interrupted")
        print("interrupted")
    except Exception as error:  # noqa: BLE001
        failures.append("setup")
        print(f"FAIL setup: {error}")
        traceback.print_exc()
        for node in NODES:
            print(f"  --- {node} log tail ---\n{cluster.log_tail(node)}")
    finally:
        cluster.teardown()
        leftovers = [line for line in run("ip", "netns", "list", check=False).stdout.splitlines()
                     if line.startswith(PREFIX)]
        if leftovers:
            failures.append("cleanup")
            print(f"FAIL cleanup: namespaces left: {leftovers}")
        if args.keep or failures:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'FAILED: ' + ', '.join(failures) if failures else 'all scenarios passed'} "
          f"({time.time() - started:.1f}s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
