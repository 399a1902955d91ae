#!/usr/bin/env python3
"""Ambit's data-path benchmark: direct vs Ambit (in-pod capture + HBONE/mTLS) vs an
haproxy mTLS tunnel pair, on one topology, in one run.

    pod A (netns ambit-bench-a, 10.72.0.1) ── veth ── pod B (netns ambit-bench-b, 10.72.0.2)

- direct: clients in A talk to servers in B.
- haproxy: a client-side haproxy in A (TCP mode, 127.0.0.1) opens TLS 1.3 with an ECDSA
  P-256 client certificate to a server-side haproxy in B, which verifies it and forwards
  to the server on 127.0.0.1; each side verifies the other against one CA.
- ambit: two node proxies (one per pod, in the host namespace) capture A's and B's
  traffic inside the pods (iptables REDIRECT, listeners in the pod namespaces) and carry
  it over pooled HBONE (HTTP/2 CONNECT over mutual TLS 1.3, SPIFFE identities); clients
  in A address B's IP as in the direct case.

Per path: iperf3 single-stream throughput (3 runs, median) and 4 streams; 1 KiB
request/response latency on a persistent connection (p50/p99); new-connection latency
(connect + one 1 KiB round trip + close, p50/p99); proxy CPU seconds per GB moved;
for Ambit, each proxy's RSS idle and with 1,000 and 10,000 idle tunnelled connections.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PREFIX = "ambit-bench-"
A_IP, B_IP = "10.72.0.1", "10.72.0.2"
IPERF_PORT, ECHO_PORT = 5201, 7000
TICKS = os.sysconf("SC_CLK_TCK")


def ns(name):
    return PREFIX + name


def run(*args, check=True, timeout=300, input=None):
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {(result.stderr or result.stdout).strip()}")
    return result


def inns(name, *args, **kwargs):
    return run("ip", "netns", "exec", ns(name), *args, **kwargs)


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def log(message):
    print(message, flush=True)


class Bench:
    def __init__(self, args, workdir):
        self.args = args
        self.dir = workdir
        self.processes = []
        self.quick = args.quick
        self.results = {"machine": machine(), "quick": args.quick, "threads": args.threads, "paths": {}}

    # ---------------------------------------------------------------- topology
    @staticmethod
    def clean():
        for line in run("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(PREFIX):
                for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                run("ip", "netns", "del", name, check=False)

    def build_topology(self):
        for pod in ["a", "b"]:
            run("ip", "netns", "add", ns(pod))
            inns(pod, "ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "eth0", "netns", ns("a"), "type", "veth", "peer", "name", "eth0", "netns", ns("b"))
        inns("a", "ip", "addr", "add", f"{A_IP}/24", "dev", "eth0")
        inns("b", "ip", "addr", "add", f"{B_IP}/24", "dev", "eth0")
        inns("a", "ip", "link", "set", "eth0", "up")
        inns("b", "ip", "link", "set", "eth0", "up")

    def spawn(self, argv, **kwargs):
        process = subprocess.Popen(argv, stdout=kwargs.pop("stdout", subprocess.DEVNULL),
                                   stderr=kwargs.pop("stderr", subprocess.DEVNULL), cwd=self.dir, **kwargs)
        self.processes.append(process)
        return process

    def wait_port(self, pod, port, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if inns(pod, "ss", "-Htln", f"sport = :{port}", check=False).stdout.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {pod}:{port}")

    def start_servers(self):
        self.spawn(["ip", "netns", "exec", ns("b"), "iperf3", "-s", "-p", str(IPERF_PORT)])
        self.spawn(["ip", "netns", "exec", ns("b"), self.netbench, "server", str(ECHO_PORT)])
        self.wait_port("b", IPERF_PORT)
        self.wait_port("b", ECHO_PORT)

    def compile_tools(self):
        self.netbench = os.path.join(self.dir, "netbench")
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools", "netbench.c")
        run("cc", "-O2", "-Wall", "-o", self.netbench, source)

    # ---------------------------------------------------------------- measuring
    def measure(self, name, host, iperf_port, echo_port, pids):
        duration = 2 if self.quick else 10
        runs = []
        cpu = 0.0
        moved = 0
        for _ in range(3):
            before = cpu_seconds(pids) if pids else 0
            out = inns("a", "iperf3", "-c", host, "-p", str(iperf_port), "-t", str(duration), "-J",
                       timeout=duration + 60)
            report = json.loads(out.stdout)
            if "error" in report:
                raise RuntimeError(f"iperf3 to {host}:{iperf_port} ({name}): {report['error']}")
            received = report["end"]["sum_received"]
            runs.append(received["bits_per_second"] / 1e9)
            if pids:
                cpu += cpu_seconds(pids) - before
            moved += received["bytes"]
        out = inns("a", "iperf3", "-c", host, "-p", str(iperf_port), "-t", str(duration), "-P", "4", "-J",
                   timeout=duration + 60)
        four = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
        rr_n = 5000 if self.quick else 20000
        crr_n = 1000 if self.quick else 5000
        rr = json.loads(inns("a", self.netbench, "rr", host, str(echo_port), str(rr_n), "1024").stdout)
        crr = json.loads(inns("a", self.netbench, "crr", host, str(echo_port), str(crr_n), "1024").stdout)
        result = {
            "throughput_gbps": round(statistics.median(runs), 3),
            "throughput_runs_gbps": [round(r, 3) for r in runs],
            "throughput_4_streams_gbps": round(four, 3),
            "rr_p50_us": rr["p50_us"], "rr_p99_us": rr["p99_us"],
            "crr_p50_us": crr["p50_us"], "crr_p99_us": crr["p99_us"],
            "crr_errors": crr["errors"],
        }
        if pids:
            result["cpu_seconds_per_gb"] = round(cpu / (moved / 1e9), 3)
        self.results["paths"][name] = result
        log(f"  {name}: {json.dumps(result)}")
        return result

    # ---------------------------------------------------------------- paths
    def direct(self):
        log("direct (no proxy)")
        self.measure("direct", B_IP, IPERF_PORT, ECHO_PORT, [])

    def certificates(self):
        d = os.path.join(self.dir, "pki")
        os.makedirs(d, exist_ok=True)

        def ossl(*args):
            run("openssl", *args)
        ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/ca.key")
        ossl("req", "-x509", "-new", "-key", f"{d}/ca.key", "-subj", "/O=bench/CN=bench-ca", "-days", "30",
             "-out", f"{d}/ca.pem")
        for side in ["client", "server"]:
            ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/{side}.key")
            ossl("req", "-new", "-key", f"{d}/{side}.key", "-subj", f"/O=bench/CN={side}", "-out", f"{d}/{side}.csr")
            with open(f"{d}/{side}.ext", "w") as f:
                f.write(f"subjectAltName=DNS:{side},IP:{B_IP}\nextendedKeyUsage=serverAuth,clientAuth\n")
            ossl("x509", "-req", "-in", f"{d}/{side}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
                 "-CAcreateserial", "-days", "30", "-extfile", f"{d}/{side}.ext", "-out", f"{d}/{side}.crt")
            with open(f"{d}/{side}.pem", "w") as f:
                f.write(open(f"{d}/{side}.crt").read() + open(f"{d}/{side}.key").read())
        return d

    def haproxy(self):
        log("haproxy (mTLS tunnel pair, TCP mode, ECDSA P-256)")
        pki = self.certificates()
        common = """global
  log stderr format raw local0 err
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
"""
        client = common + f"""
frontend iperf
  bind 127.0.0.1:{IPERF_PORT + 10000}
  default_backend iperf
backend iperf
  server b {B_IP}:8443 ssl crt {pki}/client.pem ca-file {pki}/ca.pem verify required
frontend echo
  bind 127.0.0.1:{ECHO_PORT + 10000}
  default_backend echo
backend echo
  server b {B_IP}:8444 ssl crt {pki}/client.pem ca-file {pki}/ca.pem verify required
"""
        server = common + f"""
frontend iperf
  bind :8443 ssl crt {pki}/server.pem ca-file {pki}/ca.pem verify required
  default_backend iperf
backend iperf
  server app 127.0.0.1:{IPERF_PORT}
frontend echo
  bind :8444 ssl crt {pki}/server.pem ca-file {pki}/ca.pem verify required
  default_backend echo
backend echo
  server app 127.0.0.1:{ECHO_PORT}
"""
        pids = []
        started = []
        for pod, text in [("a", client), ("b", server)]:
            path = os.path.join(self.dir, f"haproxy-{pod}.cfg")
            with open(path, "w") as f:
                f.write(text)
            run("haproxy", "-c", "-q", "-f", path)
            # `ip netns exec` execs haproxy, so the pid is haproxy's (-db: foreground, one process).
            process = self.spawn(["ip", "netns", "exec", ns(pod), "haproxy", "-db", "-f", path],
                                 stderr=open(os.path.join(self.dir, f"haproxy-{pod}.log"), "w"))
            started.append(process)
            pids.append(process.pid)
        self.wait_port("a", IPERF_PORT + 10000)
        self.wait_port("b", 8443)
        self.measure("haproxy", "127.0.0.1", IPERF_PORT + 10000, ECHO_PORT + 10000, pids)
        for process in started:
            process.terminate()
            process.wait(timeout=10)

    def ambit(self):
        log("ambit (in-pod capture, HBONE with mTLS, one node proxy per pod)")
        run(self.args.ambit, "ca", "init", "--out", os.path.join(self.dir, "ca"))
        with open(os.path.join(self.dir, "mesh.yaml"), "w") as f:
            for pod, ip in [("a", A_IP), ("b", B_IP)]:
                if pod == "a":
                    f.write("workloads:\n")
                f.write(f"- {{uid: bench//v1/Pod/default/{pod}, name: {pod}, namespace: default, "
                        f"serviceAccount: {pod}, workloadIps: [\"{ip}\"], protocol: HBONE, node: node-{pod}, "
                        f"netns: /var/run/netns/{ns(pod)}}}\n")
        nodes = {}
        for index, pod in enumerate(["a", "b"]):
            base = 16000 + index * 100
            threads = f", threads: {self.args.threads}" if self.args.threads else ""
            manifest = f"""node: {{name: node-{pod}, drainDeadline: 2s{threads}}}
admin: {{address: "127.0.0.1:{base}", readinessAddress: "127.0.0.1:{base + 21}"}}
logging: {{level: info}}
plugins:
  - id: local-config
    config: {{path: mesh.yaml}}
  - id: certificates
    config: {{backend: {{local: {{caDirectory: ca}}}}}}
  - id: capture
    config: {{socks5: {{enabled: false}}, inPod: {{enabled: true}}}}
  - id: hbone
  - id: telemetry
    config: {{address: "127.0.0.1:{base + 20}"}}
"""
            path = os.path.join(self.dir, f"node-{pod}.yaml")
            with open(path, "w") as f:
                f.write(manifest)
            nodes[pod] = (self.spawn([self.args.ambit, "run", "--manifest", path],
                                     stderr=open(os.path.join(self.dir, f"node-{pod}.log"), "w")), base + 21)
        for pod, (process, port) in nodes.items():
            deadline = time.time() + 30
            while time.time() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"node-{pod} exited: see {self.dir}/node-{pod}.log")
                ready = run("curl", "-s", "-m", "1", f"http://127.0.0.1:{port}/healthz/ready", check=False)
                if ready.stdout.strip() == "ready":
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"node-{pod} not ready")
        pids = [nodes["a"][0].pid, nodes["b"][0].pid]
        time.sleep(1)
        memory = {"idle_rss_kib": {f"node-{p}": rss_kib(nodes[p][0].pid) for p in nodes}}
        self.measure("ambit", B_IP, IPERF_PORT, ECHO_PORT, pids)
        time.sleep(1)
        memory["after_traffic_rss_kib"] = {f"node-{p}": rss_kib(nodes[p][0].pid) for p in nodes}
        for count in [1000, 10000]:
            before = {p: rss_kib(nodes[p][0].pid) for p in nodes}
            holder = subprocess.Popen(["ip", "netns", "exec", ns("a"), self.netbench, "hold", B_IP, str(ECHO_PORT),
                                       str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            line = holder.stdout.readline().strip()
            if line != f"ready {count}":
                holder.kill()
                raise RuntimeError(f"holding {count} connections failed: {line!r}")
            time.sleep(1)
            during = {p: rss_kib(nodes[p][0].pid) for p in nodes}
            memory[f"rss_kib_with_{count}"] = {f"node-{p}": during[p] for p in nodes}
            memory[f"kib_per_connection_{count}"] = {
                f"node-{p}": round((during[p] - before[p]) / count, 2) for p in nodes}
            holder.stdin.close()
            holder.wait(timeout=60)
            time.sleep(1)
        self.results["paths"]["ambit"]["memory"] = memory
        log(f"  ambit memory: {json.dumps(memory)}")
        for process, _ in nodes.values():
            process.terminate()
        for process, _ in nodes.values():
            process.wait(timeout=30)

    def teardown(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.clean()


def machine():
    info = {"cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_kib"] = int(f.readline().split()[1])
        info["kernel"] = os.uname().release
    except OSError:
        pass
    return info


def ratios(paths):
    a, d, h = paths.get("ambit"), paths.get("direct"), paths.get("haproxy")
    out = {}
    if a and d:
        out["ambit_vs_direct"] = {k: round(a[k] / d[k], 3) for k in
                                  ["throughput_gbps", "throughput_4_streams_gbps", "rr_p50_us", "rr_p99_us",
                                   "crr_p50_us", "crr_p99_us"] if d.get(k)}
    if a and h:
        out["ambit_vs_haproxy"] = {k: round(a[k] / h[k], 3) for k in
                                   ["throughput_gbps", "throughput_4_streams_gbps", "rr_p50_us", "rr_p99_us",
                                    "crr_p50_us", "crr_p99_us", "cpu_seconds_per_gb"] if h.get(k)}
    return out


def table(results):
    paths = results["paths"]
    rows = [
        ("throughput, 1 stream (Gbit/s)", "throughput_gbps"),
        ("throughput, 4 streams (Gbit/s)", "throughput_4_streams_gbps"),
        ("1 KiB RR p50 (µs)", "rr_p50_us"),
        ("1 KiB RR p99 (µs)", "rr_p99_us"),
        ("new connection p50 (µs)", "crr_p50_us"),
        ("new connection p99 (µs)", "crr_p99_us"),
        ("proxy CPU s per GB", "cpu_seconds_per_gb"),
    ]
    names = [n for n in ["direct", "haproxy", "ambit"] if n in paths]
    lines = ["| metric | " + " | ".join(names) + " | ambit/direct | ambit/haproxy |",
             "|---|" + "---|" * (len(names) + 2)]
    r = results.get("ratios", {})
    for label, key in rows:
        cells = [str(paths[n].get(key, "–")) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r.get('ambit_vs_direct', {}).get(key, '–')} | "
                     f"{r.get('ambit_vs_haproxy', {}).get(key, '–')} |")
    memory = paths.get("ambit", {}).get("memory")
    if memory:
        lines.append("")
        lines.append("| Ambit memory | node-a | node-b |")
        lines.append("|---|---|---|")
        for key, label in [("idle_rss_kib", "idle RSS (KiB)"), ("after_traffic_rss_kib", "RSS after the runs (KiB)"),
                           ("rss_kib_with_1000", "RSS, 1,000 idle tunnels (KiB)"),
                           ("kib_per_connection_1000", "KiB per connection (1,000)"),
                           ("rss_kib_with_10000", "RSS, 10,000 idle tunnels (KiB)"),
                           ("kib_per_connection_10000", "KiB per connection (10,000)")]:
            if key in memory:
                lines.append(f"| {label} | {memory[key]['node-a']} | {memory[key]['node-b']} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ambit", required=True)
    parser.add_argument("--quick", action="store_true", help="2 s iperf3 runs, fewer round trips (< 3 min)")
    parser.add_argument("--json", help="write every figure and the ratios to this file")
    parser.add_argument("--only", help="comma-separated paths: direct,haproxy,ambit")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--threads", type=int, help="node.threads of both Ambit nodes (default: the number of cores)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/run needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    import resource
    # 10,000 held connections: two descriptors each in a proxy, one in the holder.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        with open("/proc/sys/fs/nr_open") as f:
            hard = max(hard, min(int(f.read()), 1 << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    workdir = tempfile.mkdtemp(prefix="ambit-bench-")
    bench = Bench(args, workdir)
    only = set((args.only or "direct,haproxy,ambit").split(","))
    started = time.time()
    status = 0
    try:
        Bench.clean()
        bench.compile_tools()
        bench.build_topology()
        bench.start_servers()
        if "direct" in only:
            bench.direct()
        if "haproxy" in only:
            bench.haproxy()
        if "ambit" in only:
            bench.ambit()
    except Exception as error:  # noqa: BLE001 - reported, then cleaned up
        print(f"bench failed: {error} (logs in {workdir})", file=sys.stderr)
        status = 1
        args.keep = True
    finally:
        bench.teardown()
    bench.results["ratios"] = ratios(bench.results["paths"])
    bench.results["seconds"] = round(time.time() - started, 1)
    print()
    print(table(bench.results))
    print(f"\n({bench.results['seconds']} s; {'quick' if args.quick else 'full'} run)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bench.results, f, indent=2)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
