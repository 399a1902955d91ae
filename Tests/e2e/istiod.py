#!/usr/bin/env python3
"""Ambit under istiod, end to end: two `ambit run --profile ztunnel` nodes in network
namespaces, configured only by ztunnel's environment variables, syncing workloads,
services and policies over delta xDS from a stand-in istiod (`ambit-istiod-standin`:
Workload API resources from a JSON file, Istio's CA API on the same TLS port, as istiod
serves both on 15012), and carrying pod traffic over HBONE with the certificates that CA
issued. The pods' redirect rules are istio-cni's, installed by this script from istio-cni's
golden rule set, as istio-cni would (the profile leaves rules to it), and each node takes
its pods over ZDS from a stand-in istio-cni agent (`zds_agent.py`: a SOCK_SEQPACKET socket,
each pod's network namespace passed by SCM_RIGHTS), as ztunnel does.

    node1 (ambit, stand-in istiod on 10.71.0.1:15012)    node2 (ambit)
    br0 10.71.1.1/24 ── veth 10.71.0.1/30 ──────────── 10.71.0.2/30 ── br0 10.71.2.1/24
     ├─ a1 10.71.1.10                                   ├─ b1 10.71.2.10
     ├─ a2 10.71.1.11                                   └─ x  10.71.2.20 (not in the mesh)
     └─ c1 10.71.1.12 (joins the mesh at run time)
    service b1.default.svc.cluster.local 10.71.100.10:80 -> b1:9000

The nodes find istiod by its cluster name, istiod.istio-system.svc (the profile's default
in a cluster), through /etc/netns/<node>/hosts. Namespaces are named ambit-istiod-*; they
and the hosts files are removed at the end, even on failure.
"""

import argparse
import base64
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402  (the topology, pod programs and helpers are shared)
import zds_agent  # noqa: E402
from e2e import Failure, expect, eventually, growth, inns, run, series  # noqa: E402

e2e.PREFIX = "ambit-istiod-"
e2e.PODS = {
    # name: (node, ip, in mesh, captured from the config): nothing is captured from a
    # config here; istio-cni's stand-in hands them over ZDS.
    "a1": ("node1", "10.71.1.10", True, False),
    "a2": ("node1", "10.71.1.11", True, False),
    "c1": ("node1", "10.71.1.12", True, False),
    "b1": ("node2", "10.71.2.10", True, False),
    "x": ("node2", "10.71.2.20", False, False),
}
PODS = e2e.PODS
ns = e2e.ns
ISTIOD = "istiod.istio-system.svc"
ISTIOD_IP = "10.71.0.1"
SERVICE_VIP = "10.71.100.10"
SERVICE = "b1.default.svc.cluster.local"
NODE_IPS = {"node1": "10.71.0.1", "node2": "10.71.0.2"}
TRUST = "cluster.local"
# A stand-in upstream resolver in node1's namespace, on its pod bridge (reachable from the
# pods, where the DNS proxies' forwarders make their sockets), and the cluster DNS address
# pods send to (istio-cni's rules redirect it to the pod's DNS proxy on 15053).
UPSTREAM_DNS = "10.71.1.1"
CLUSTER_DNS = "10.96.0.10"
DNS_TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dns_tool.py")

# istio-cni's in-pod rules (cni/pkg/iptables/testdata/default.golden), as iptables-restore
# input: the pod's traffic to 15001 (out) and 15006 (in), HBONE 15008 left alone, the
# proxy's own packets (mark 0x539) exempt, DNS to 15053.
ISTIO_CNI_RULES = """*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A ISTIO_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -d 169.254.7.127 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-port 15053
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
*raw
:ISTIO_OUTPUT - [0:0]
:ISTIO_PRERT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1
-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1
COMMIT
"""


def uid(pod):
    """istiod's uid for a pod: cluster//Pod/namespace/name."""
    return f"Kubernetes//Pod/default/{pod}"


def pod_uid(pod):
    """The pod's Kubernetes UID, which ZDS names it by (not istiod's workload uid)."""
    return f"3f6c1b2e-0000-4000-8000-{pod.encode().hex():0>12}"


def principal(pod):
    return f"spiffe://{TRUST}/ns/default/sa/{pod}"


def b64ip(ip):
    return base64.b64encode(ipaddress.ip_address(ip).packed).decode()


def workload(pod, services=None):
    node, ip, _, _ = PODS[pod]
    body = {"uid": uid(pod), "name": pod, "namespace": "default", "addresses": [b64ip(ip)],
            "tunnelProtocol": "HBONE", "trustDomain": TRUST, "serviceAccount": pod, "node": node,
            "workloadType": "POD", "workloadName": pod, "canonicalName": pod, "canonicalRevision": "v1",
            "clusterId": "Kubernetes", "status": "HEALTHY"}
    if services:
        body["services"] = services
    return {"workload": body}


def b1_service():
    return {"service": {"name": "b1", "namespace": "default", "hostname": SERVICE,
                        "addresses": [{"network": "", "address": b64ip(SERVICE_VIP)}],
                        "ports": [{"servicePort": 80, "targetPort": 9000}]}}


def allow_b1_ports():
    """b1: anyone on 9000/8080/5201, only a1's identity on 9001 (referenced by b1's workload)."""
    return {"name": "b1-ports", "namespace": "default", "scope": "WORKLOAD_SELECTOR", "action": "ALLOW",
            "rules": [{"clauses": [{"matches": [{"destinationPorts": [9000, 8080, 5201]}]}]},
                      {"clauses": [{"matches": [{"principals": [{"exact": f"{TRUST}/ns/default/sa/a1"}],
                                                 "destinationPorts": [9001]}]}]}]}


def deny_a1_9000():
    return {"name": "deny-a1-9000", "namespace": "default", "scope": "NAMESPACE", "action": "DENY",
            "rules": [{"clauses": [{"matches": [{"principals": [{"exact": f"{TRUST}/ns/default/sa/a1"}],
                                                 "destinationPorts": [9000]}]}]}]}


class Mesh:
    """The stand-in istiod's resources file; `publish` rewrites it and sends SIGHUP."""

    def __init__(self, path):
        self.path = path
        self.extra_workloads = []
        self.bad = False
        self.deny = False

    def document(self):
        b1 = workload("b1", services={f"default/{SERVICE}": {"ports": [{"servicePort": 80, "targetPort": 9000}]}})
        b1["workload"]["authorizationPolicies"] = ["default/b1-ports"]
        addresses = [workload("a1"), workload("a2"), b1, b1_service()] + [workload(p) for p in self.extra_workloads]
        if self.bad:
            # A workload whose address has 5 bytes: the nodes must NACK it, keep the rest.
            addresses.append({"workload": {"uid": "Kubernetes//Pod/default/broken", "name": "broken",
                                           "namespace": "default", "addresses": [base64.b64encode(b"\x0a\x47\x01\x63\x01").decode()],
                                           "tunnelProtocol": "HBONE", "serviceAccount": "broken", "node": "node1"}})
        policies = [allow_b1_ports()] + ([deny_a1_9000()] if self.deny else [])
        return {"addresses": addresses, "authorizations": policies}

    def write(self):
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.document(), f, indent=1)
        os.replace(self.path + ".tmp", self.path)


class IstiodCluster(e2e.Cluster):
    def __init__(self, ambit, standin, workdir, verbose):
        super().__init__(ambit, workdir, verbose)
        self.standin_binary = standin
        self.standin = None
        self.mesh = Mesh(os.path.join(workdir, "resources.json"))
        self.hosts_dirs = []
        # One istio-cni agent per node, on the socket the node's INPOD_UDS names.
        self.agents = {node: zds_agent.FakeIstioCNI(os.path.join(workdir, f"{node}-cni", "ztunnel.sock"))
                       for node in NODES_}

    @staticmethod
    def clean_leftovers():
        e2e.Cluster.clean_leftovers()
        for node in NODES_:
            shutil.rmtree(f"/etc/netns/{ns(node)}", ignore_errors=True)

    def write_config(self):
        run(self.ambit, "ca", "init", "--out", os.path.join(self.dir, "ca"))
        tokens = {}
        for node in NODES_:
            token = f"token-{node}-{os.urandom(6).hex()}"
            tokens[token] = node
            with open(os.path.join(self.dir, f"{node}.token"), "w") as f:
                f.write(token + "\n")
            # `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts.
            directory = f"/etc/netns/{ns(node)}"
            os.makedirs(directory, exist_ok=True)
            self.hosts_dirs.append(directory)
            with open(os.path.join(directory, "hosts"), "w") as f:
                f.write(f"127.0.0.1 localhost\n{ISTIOD_IP} {ISTIOD}\n")
            # The node's resolver, which the pods' DNS proxies forward to (the stand-in upstream).
            with open(os.path.join(directory, "resolv.conf"), "w") as f:
                f.write(f"nameserver {UPSTREAM_DNS}\n")
        with open(os.path.join(self.dir, "tokens.json"), "w") as f:
            json.dump(tokens, f)
        self.mesh.write()

    # ------------------------------------------------------------ istiod
    def start_standin(self):
        log = open(os.path.join(self.dir, "istiod.log"), "a")
        self.standin = subprocess.Popen(
            ["ip", "netns", "exec", ns("node1"), self.standin_binary, "--listen", f"{ISTIOD_IP}:15012",
             "--ca-directory", os.path.join(self.dir, "ca"), "--server-name", ISTIOD,
             "--tokens", os.path.join(self.dir, "tokens.json"), "--resources", self.mesh.path],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        eventually(lambda: expect("istiod stand-in serving" in self.istiod_log(),
                                  f"the stand-in istiod did not start:\n{self.istiod_log()}"), timeout=20)

    def stop_standin(self):
        if self.standin is not None and self.standin.poll() is None:
            self.standin.send_signal(signal.SIGTERM)
            try:
                self.standin.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.standin.kill()
                self.standin.wait()
        self.standin = None

    def istiod_log(self):
        try:
            with open(os.path.join(self.dir, "istiod.log")) as f:
                return f.read()
        except OSError:
            return ""

    def publish(self):
        """Rewrites the resources and has the stand-in push the difference."""
        reloads = self.istiod_log().count("reloaded ")
        self.mesh.write()
        self.standin.send_signal(signal.SIGHUP)
        eventually(lambda: expect(self.istiod_log().count("reloaded ") > reloads,
                                  f"the stand-in did not reload:\n{self.istiod_log()[-2000:]}"), timeout=10)

    # ------------------------------------------------------------ nodes
    def start_node(self, node):
        log = open(os.path.join(self.dir, f"{node}.log"), "a")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # In a cluster: the profile's istiod is istiod.istio-system.svc:15012.
            "KUBERNETES_SERVICE_HOST": "10.96.0.1",
            "NODE_NAME": node,
            "POD_NAME": f"ztunnel-{node}",
            "POD_NAMESPACE": "istio-system",
            "INSTANCE_IP": NODE_IPS[node],
            "XDS_ROOT_CA": os.path.join(self.dir, "ca", "root-cert.pem"),
            "CA_ROOT_CA": os.path.join(self.dir, "ca", "root-cert.pem"),
            "AUTH_TOKEN": os.path.join(self.dir, f"{node}.token"),
            "ISTIO_META_CLUSTER_ID": "Kubernetes",
            "SECRET_TTL": "1h",
            "RUST_LOG": "info",
            "INPOD_UDS": self.agents[node].path,
        }
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns(node), self.ambit, "run", "--profile", "ztunnel"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, env=env)
        self.nodes[node] = process
        return process

    def config_dump(self, node):
        code, body = self.admin(node, "GET", "/config_dump")
        expect(code == 200, f"{node} /config_dump answered {code}: {body[:300]}")
        return json.loads(body)

    def xds(self, node):
        dump = self.config_dump(node)
        status = dump.get("xds")
        expect(isinstance(status, dict), f"{node} /config_dump has no xds section: {list(dump)}")
        return status, dump

    def install_rules(self, pod):
        """istio-cni's rules in the pod (it installs them before it sends the pod)."""
        inns(pod, "iptables-restore", input=ISTIO_CNI_RULES)
        inns(pod, "ip", "rule", "add", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
        inns(pod, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")

    def start_upstream_dns(self):
        self.upstream_log = os.path.join(self.dir, "upstream-dns.log")
        self.upstream_dns = subprocess.Popen(
            ["ip", "netns", "exec", ns("node1"), sys.executable, DNS_TOOL, "serve", "--listen", UPSTREAM_DNS,
             "--zone", "example.org=192.0.2.7", "--log", self.upstream_log],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eventually(lambda: expect(os.path.exists(self.upstream_log) and "serving" in open(self.upstream_log).read(),
                                  "the upstream DNS stand-in did not start"), timeout=10)

    def dns(self, pod, name, qtype="A", tcp=False):
        args = ["python3", DNS_TOOL, "query", name, qtype, "--server", CLUSTER_DNS] + (["--tcp"] if tcp else [])
        result = inns(pod, *args, check=False)
        expect(result.returncode == 0, f"DNS query {name} {qtype} from {pod} failed: {result.stderr[-500:]}")
        return json.loads(result.stdout)

    def zds_pod(self, pod):
        return zds_agent.Pod(pod_uid(pod), pod, "default", pod, e2e.netns_path(pod))

    def add_pod(self, pod, send=True):
        """What istio-cni does for a new pod: its rules in the pod, then the pod to its node over ZDS."""
        self.install_rules(pod)
        error = self.agents[PODS[pod][0]].add(self.zds_pod(pod), send=send)
        expect(not error, f"the node acked {pod}'s AddWorkload with an error: {error}")

    def pods_listing(self, node):
        code, body = self.admin(node, "GET", "/pods")
        expect(code == 200, f"{node} /pods answered {code}: {body[:300]}")
        return {entry["uid"]: entry for entry in json.loads(body)}

    def listens(self, pod, port):
        out = inns(pod, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
        return bool(out.strip())

    def teardown(self):
        self.stop_standin()
        if getattr(self, "upstream_dns", None) is not None:
            self.upstream_dns.kill()
            self.upstream_dns.wait()
        super().teardown()
        for agent in self.agents.values():
            agent.close()
        for directory in self.hosts_dirs:
            shutil.rmtree(directory, ignore_errors=True)


NODES_ = list(e2e.NODES)


def echo_ok(c, src, host, port, size=65536):
    out = c.echo(src, host, port, size)
    if out.get("sha_received") != out.get("sha_sent") or out.get("received") != size:
        raise Failure(f"{src} -> {host}:{port}: {out}")
    return out


def refused(c, src, host, port):
    out = c.echo(src, host, port, 4096)
    if out.get("received", 0) != 0:
        raise Failure(f"{src} -> {host}:{port} should be refused: {out}")
    return out


# ---------------------------------------------------------------- scenarios

def scenario_synced(c):
    """Both nodes hold istiod's resources, ACKed, with ztunnel's node id; the CA issued their certificates."""
    for node in NODES_:
        status, dump = c.xds(node)
        expect(status.get("state") == "connected" and status.get("synced") is True,
               f"{node} xds: state {status.get('state')}, synced {status.get('synced')}, error {status.get('lastError')}")
        expect(status.get("address") == f"{ISTIOD}:15012", f"{node} dials {status.get('address')}")
        expect(status.get("nodeID") == f"ztunnel~{NODE_IPS[node]}~ztunnel-{node}.istio-system~istio-system.svc.cluster.local",
               f"{node} node id {status.get('nodeID')}")
        addresses = status["types"]["type.googleapis.com/istio.workload.Address"]
        expect(set(addresses["versions"]) >= {uid("a1"), uid("a2"), uid("b1"), f"default/{SERVICE}"},
               f"{node} accepted {sorted(addresses['versions'])}")
        text = json.dumps(dump)
        expect(uid("b1") in text and SERVICE in text, f"{node} /config_dump does not show b1 and its service")
    log = c.istiod_log()
    for node, pod in [("node1", "a1"), ("node1", "a2"), ("node2", "b1")]:
        expect(f"node={node}" in log and principal(pod) in log and "issued certificate" in log,
               f"the stand-in's CA did not issue {principal(pod)} to {node}:\n{log[-3000:]}")


def scenario_cross_node(c):
    """a1 (node1) -> b1 (node2) over HBONE with istiod-issued certificates: byte-exact; node2 sees a1's identity."""
    before = c.metrics("node2")
    out = c.echo("a1", PODS["b1"][1], 9000, 4 * 1024 * 1024)
    expect(out.get("received") == 4 * 1024 * 1024 and out.get("sha_received") == out.get("sha_sent"),
           f"echo: { {k: v for k, v in out.items() if not k.startswith('sha')} }")

    def seen():
        after = c.metrics("node2")
        labels = dict(reporter="destination", source_principal=principal("a1"), destination_workload="b1",
                      connection_security_policy="mutual_tls")
        expect(growth(before, after, "istio_tcp_connections_opened_total", **labels) >= 1,
               "node2 did not record a1's mTLS connection")
        expect(growth(before, after, "istio_tcp_received_bytes_total", **labels) >= 4 * 1024 * 1024,
               "node2 counted fewer bytes than a1 sent")
    eventually(seen)
    inside = inns("a1", "ss", "-Htn", "state", "established", "dst", f"{PODS['b1'][1]}:15008").stdout
    expect(PODS["a1"][1] in inside, f"no HBONE connection from inside a1 to b1:15008: {inside!r}")


def scenario_service_vip(c):
    """a1 -> the service VIP istiod published: load-balanced to b1's target port over HBONE."""
    before = c.metrics("node2")
    echo_ok(c, "a1", SERVICE_VIP, 80, 256 * 1024)

    def seen():
        after = c.metrics("node2")
        expect(growth(before, after, "istio_tcp_connections_opened_total", reporter="destination",
                      source_principal=principal("a1"), destination_service=SERVICE) >= 1,
               f"node2 did not attribute the VIP connection to {SERVICE}")
    eventually(seen)


def scenario_policy_from_istiod(c):
    """The ALLOW policy istiod sent (referenced by b1's workload): a1 may use 9001, a2 may not, x (no identity) may not."""
    echo_ok(c, "a1", PODS["b1"][1], 9001, 4096)
    refused(c, "a2", PODS["b1"][1], 9001)
    refused(c, "x", PODS["b1"][1], 9001)
    echo_ok(c, "a2", PODS["b1"][1], 9000, 4096)


def scenario_policy_push(c):
    """A DENY pushed live takes effect without a restart, and its removal lifts it."""
    c.mesh.deny = True
    c.publish()
    eventually(lambda: refused(c, "a1", PODS["b1"][1], 9000), timeout=10)
    echo_ok(c, "a2", PODS["b1"][1], 9000, 4096)
    c.mesh.deny = False
    c.publish()
    eventually(lambda: echo_ok(c, "a1", PODS["b1"][1], 9000, 4096), timeout=10)


def scenario_workload_joins(c):
    """c1 is published while the nodes run; its node gets a certificate for it from the CA and serves it."""
    refused_before = "c1" not in c.mesh.extra_workloads
    expect(refused_before, "c1 already published")
    c.mesh.extra_workloads.append("c1")
    c.publish()

    def known():
        status, _ = c.xds("node1")
        versions = status["types"]["type.googleapis.com/istio.workload.Address"]["versions"]
        expect(uid("c1") in versions, f"node1 has not got c1: {sorted(versions)}")
    eventually(known, timeout=10)
    c.add_pod("c1")
    c.wait_ready("node1", timeout=30)
    before = c.metrics("node2")
    eventually(lambda: echo_ok(c, "c1", PODS["b1"][1], 9000), timeout=15)

    def seen():
        after = c.metrics("node2")
        expect(growth(before, after, "istio_tcp_connections_opened_total", reporter="destination",
                      source_principal=principal("c1")) >= 1, "node2 did not see c1's identity")
    eventually(seen)
    expect(principal("c1") in c.istiod_log(), "the CA did not issue c1's certificate")


def scenario_bad_resource(c):
    """A push with a malformed workload: NACKed by name, the rest of the push applied, the node serves on."""
    c.mesh.bad = True
    c.mesh.deny = True
    c.publish()

    def nacked():
        status, _ = c.xds("node1")
        addresses = status["types"]["type.googleapis.com/istio.workload.Address"]
        rejected = addresses.get("rejected", {})
        expect("Kubernetes//Pod/default/broken" in rejected, f"node1 did not reject the bad workload: {rejected}")
    eventually(nacked, timeout=10)
    # The policy in the same reload (another type, another push) is applied.
    eventually(lambda: refused(c, "a1", PODS["b1"][1], 9000), timeout=10)
    ok, pending = c.ready("node1")
    expect(ok, f"node1 unready after a NACK: {pending}")
    echo_ok(c, "a2", PODS["b1"][1], 9000)
    c.mesh.bad = False
    c.mesh.deny = False
    c.publish()
    eventually(lambda: echo_ok(c, "a1", PODS["b1"][1], 9000), timeout=10)


def scenario_istiod_restart(c):
    """istiod goes away: the nodes stay ready and keep carrying traffic on their last state; when it is back they reconnect."""
    before = {node: c.xds(node)[0]["connections"] for node in NODES_}
    c.stop_standin()

    def lost():
        for node in NODES_:
            status, _ = c.xds(node)
            expect(status["state"] in ("retrying", "connecting"), f"{node} xds state {status['state']} with istiod down")
    eventually(lost, timeout=15)
    for node in NODES_:
        ok, pending = c.ready(node)
        expect(ok, f"{node} became unready while istiod is down: {pending}")
    echo_ok(c, "a1", PODS["b1"][1], 9000)
    echo_ok(c, "a1", SERVICE_VIP, 80)
    c.start_standin()

    def back():
        for node in NODES_:
            status, _ = c.xds(node)
            expect(status["state"] == "connected" and status["connections"] > before[node],
                   f"{node} has not reconnected: {status['state']}, {status.get('lastError')}")
    # Backoff doubles to 15 s while istiod is away: allow one full wait.
    eventually(back, timeout=25)
    echo_ok(c, "a1", PODS["b1"][1], 9000)


def scenario_zds_snapshot(c):
    """The pods came in istio-cni's snapshot: each is served in its own namespace, found by its WorkloadInfo."""
    for node, pods in [("node1", ["a1", "a2"]), ("node2", ["b1"])]:
        listing = c.pods_listing(node)
        for pod in pods:
            entry = listing.get(pod_uid(pod))
            expect(entry is not None, f"{node} /pods does not list {pod} ({pod_uid(pod)}): {sorted(listing)}")
            expect(entry["origin"] == "zds" and entry["state"] == "captured" and entry["workload"] == uid(pod),
                   f"{node} /pods for {pod}: {entry}")
            for port in (15001, 15006, 15008):
                expect(c.listens(pod, port), f"nothing listens on {port} inside {pod}")
    acks = c.agents["node1"].acks
    expect(("add", pod_uid("a1"), "") in acks and ("snapshot", "", "") in acks, f"node1's acks: {acks}")


def scenario_zds_delete(c):
    """DelWorkload: that pod's listeners close at once, the other pods are untouched; added again, it is served again."""
    agent = c.agents["node1"]
    error = agent.delete(pod_uid("a2"))
    expect(error == "", f"DelWorkload acked with {error!r}")
    eventually(lambda: expect(not c.listens("a2", 15001) and not c.listens("a2", 15008),
                              "a2's listeners are still open after DelWorkload"), timeout=5)
    expect(pod_uid("a2") not in c.pods_listing("node1"), "node1 still lists a2")
    echo_ok(c, "a1", PODS["b1"][1], 9000)
    c.wait_ready("node1", timeout=10)
    error = agent.add(c.zds_pod("a2"))
    expect(error == "", f"AddWorkload acked with {error!r}")
    expect(c.listens("a2", 15001), "a2 acked before its listeners were up")
    echo_ok(c, "a2", PODS["b1"][1], 9000)


def scenario_zds_protocol_errors(c):
    """Keep after the snapshot, an AddWorkload without its namespace, an undecodable message: each is acked
    with the error and the node reconnects and takes a fresh snapshot; the pods keep being served."""
    agent = c.agents["node1"]
    cases = [
        ("keep after the snapshot", zds_agent.keep_workload(pod_uid("a1")), "after snapshot"),
        ("add without a descriptor", zds_agent.add_workload(pod_uid("zz"), "zz", "default", "zz"), "no control message"),
        ("undecodable", b"\x0a\xff\xff\xff\xff\x0f", "failure to read message"),
    ]
    for name, message, wanted in cases:
        snapshots = agent.snapshots_done
        error = agent.send_raw(message, kind=name)
        expect(error is not None and wanted in error, f"{name}: acked {error!r}, wanted {wanted!r}")
        agent.wait_connected(snapshots=snapshots + 1, timeout=15)
        c.wait_ready("node1", timeout=15)
        echo_ok(c, "a1", PODS["b1"][1], 9000)
    expect("ZDS protocol error" in c.log_tail("node1", 200), "node1 did not log the protocol errors")


def scenario_zds_node_restart(c):
    """node1 restarts: istio-cni's fresh snapshot brings every pod back."""
    agent = c.agents["node1"]
    snapshots = agent.snapshots_done
    c.stop_node("node1")
    c.start_node("node1")
    agent.wait_connected(snapshots=snapshots + 1, timeout=30)
    c.wait_ready("node1", timeout=30)
    for pod in ["a1", "a2"]:
        echo_ok(c, pod, PODS["b1"][1], 9000)


def addresses(answer, kind="A"):
    return sorted(record["value"] for record in answer["answers"] if record["type"] == kind)


def scenario_dns_service_name(c):
    """A pod's DNS goes to its in-pod proxy: a service name answers the VIP from the mesh (authoritative, TTL 30),
    by full name and by short name, and a connection to the answer is tunnelled."""
    before = c.metrics("node1")
    for name in [SERVICE, "b1", "b1.default", "b1.default.svc"]:
        answer = c.dns("a1", name)
        expect(answer["rcode"] == 0 and answer["aa"] and answer["id_matches"], f"{name}: {answer}")
        expect(addresses(answer) == [SERVICE_VIP], f"{name} answered {answer['answers']}")
        expect(all(r["ttl"] == 30 for r in answer["answers"] if r["type"] == "A"), f"{name} TTLs: {answer['answers']}")
    echo_ok(c, "a1", addresses(c.dns("a1", SERVICE))[0], 80)
    after = c.metrics("node1")
    expect(growth(before, after, "istio_dns_requests_total") >= 5, "istio_dns_requests_total did not count the queries")


def scenario_dns_forwarded(c):
    """A name outside the mesh is forwarded to the node's resolver from inside the pod (and not recaptured)."""
    before = c.metrics("node1")
    answer = c.dns("a1", "example.org")
    expect(answer["rcode"] == 0 and addresses(answer) == ["192.0.2.7"], f"example.org: {answer}")
    expect("example.org" in open(c.upstream_log).read(), "the upstream never saw the query")
    missing = c.dns("a1", "nothing.example.org")
    expect(missing["rcode"] == 3, f"an NXDOMAIN upstream is passed on: {missing}")
    after = c.metrics("node1")
    expect(growth(before, after, "istio_dns_upstream_requests_total") >= 2, "istio_dns_upstream_requests_total did not grow")


def scenario_dns_aaaa_and_tcp(c):
    """AAAA for an IPv4-only service is an empty NOERROR (not NXDOMAIN); the same answers come over TCP."""
    aaaa = c.dns("a1", SERVICE, "AAAA")
    expect(aaaa["rcode"] == 0 and aaaa["answers"] == [], f"AAAA: {aaaa}")
    over_tcp = c.dns("a1", SERVICE, tcp=True)
    expect(over_tcp["rcode"] == 0 and addresses(over_tcp) == [SERVICE_VIP], f"over TCP: {over_tcp}")
    forwarded = c.dns("a1", "example.org", tcp=True)
    expect(addresses(forwarded) == ["192.0.2.7"], f"example.org over TCP: {forwarded}")


SCENARIOS = [
    scenario_synced,
    scenario_zds_snapshot,
    scenario_cross_node,
    scenario_service_vip,
    scenario_policy_from_istiod,
    scenario_policy_push,
    scenario_workload_joins,
    scenario_bad_resource,
    scenario_istiod_restart,
    scenario_dns_service_name,
    scenario_dns_forwarded,
    scenario_dns_aaaa_and_tcp,
    scenario_zds_delete,
    scenario_zds_protocol_errors,
    scenario_zds_node_restart,
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ambit", required=True, help="the ambit binary")
    parser.add_argument("--standin", required=True, help="the ambit-istiod-standin binary")
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("Tests/e2e/istiod.py needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    for tool in ["ip", "iptables-restore", "curl", "ss"]:
        if shutil.which(tool) is None:
            print(f"Tests/e2e/istiod.py needs `{tool}` (see .ci/run for the packages)", file=sys.stderr)
            return 2

    workdir = tempfile.mkdtemp(prefix="ambit-istiod-")
    cluster = IstiodCluster(os.path.abspath(args.ambit), os.path.abspath(args.standin), workdir, args.verbose)

    def interrupted(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, interrupted)

    failures = []
    started = time.time()
    try:
        IstiodCluster.clean_leftovers()
        cluster.build()
        cluster.write_config()
        cluster.start_servers()
        cluster.start_standin()
        cluster.start_upstream_dns()
        # The pods exist before the nodes start: they arrive in istio-cni's snapshot.
        for pod in ["a1", "a2", "b1"]:
            cluster.add_pod(pod, send=False)
        for node in NODES_:
            cluster.start_node(node)
        for node in NODES_:
            cluster.agents[node].wait_connected()
            cluster.wait_ready(node)
        print(f"cluster up under the stand-in istiod in {time.time() - started:.1f}s (work directory {workdir})")
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
                for node in NODES_:
                    print(f"  --- {node} log tail ---\n{cluster.log_tail(node, 15)}")
                print(f"  --- istiod log tail ---\n{cluster.istiod_log()[-1500:]}")
                if cluster.standin is None or cluster.standin.poll() is not None:
                    cluster.start_standin()
    except KeyboardInterrupt:
        failures.append("interrupted")
        print("interrupted")
    except Exception as error:  # noqa: BLE001
        failures.append("setup")
        print(f"FAIL setup: {error}")
        traceback.print_exc()
        for node in NODES_:
            print(f"  --- {node} log tail ---\n{cluster.log_tail(node)}")
        print(f"  --- istiod log tail ---\n{cluster.istiod_log()[-3000:]}")
    finally:
        cluster.teardown()
        leftovers = [line for line in run("ip", "netns", "list", check=False).stdout.splitlines()
                     if line.startswith(e2e.PREFIX)]
        leftovers += [d for d in cluster.hosts_dirs if os.path.exists(d)]
        if leftovers:
            failures.append("cleanup")
            print(f"FAIL cleanup: left behind: {leftovers}")
        if args.keep or failures:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'FAILED: ' + ', '.join(failures) if failures else 'all scenarios passed'} "
          f"({time.time() - started:.1f}s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
