#!/usr/bin/env python3
"""Ambit's load scenarios (RELIABILITY.md, "Load"): real `ambit run` processes on loopback
(pair.py: clients ──SOCKS5──▶ node-a ══HBONE══▶ node-b ──▶ echo backend, 127.0.41.x, admin
ports 17200–17399).

1. hold: N tunnelled connections (default 10,000) opened and held for S seconds; each
   sends a message (default 1 KiB) every P seconds (staggered), the echo comes back and
   is checked byte for byte; at the end every connection half-closes and must get every
   byte back and a clean end of stream. Reports the connections held, bytes sent and
   verified, lost bytes (must be 0), each proxy's RSS before, at peak and after (and KiB
   per connection, which must stay within --max-kib-per-connection), CPU, descriptors.
2. churn: for C seconds, K connections at a time open, echo 1 KiB, half-close, get it all
   back, close, and are replaced at once. Reports the rate, failures, each proxy's open
   descriptors and RSS before, halfway and after (a leak shows as growth between the
   halves; descriptors must come back to where they were).

Exit status 0 when no connection failed, no byte was lost, descriptors came back and
the proxies stayed up. `--json FILE` writes every figure.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pair import (ENDED, OPEN, Engine, Failure, Layout, Pair, cpu_seconds, fd_count, kill_leftovers,  # noqa: E402
                  raise_fd_limit, rss_kib)

LAYOUT = Layout("127.0.41", 17200)
WORKDIR_PREFIX = "ambit-rel-load-"
NODES = ["node-a", "node-b"]


def log(text):
    print(text, flush=True)


class Sampler:
    """Peak RSS of each node, sampled as the client loop runs."""

    def __init__(self, pair):
        self.pair = pair
        self.peak = {n: 0 for n in NODES}
        self.next = 0.0

    def sample(self, now, every=0.5):
        if now < self.next:
            return
        self.next = now + every
        for n in NODES:
            self.peak[n] = max(self.peak[n], rss_kib(self.pair.pid(n)))


def snapshot(pair):
    return {n: {"rss_kib": rss_kib(pair.pid(n)), "fds": fd_count(pair.pid(n)), "cpu_s": round(cpu_seconds(pair.pid(n)), 2)}
            for n in NODES}


def settle(pair, timeout=30):
    """Waits until both nodes report no open connection, then a little longer."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(pair.open_connections(n) == 0 for n in NODES):
            break
        time.sleep(0.2)
    time.sleep(2)


def check_alive(pair):
    for n in NODES:
        process = pair.nodes.get(n)
        if process is None or process.poll() is not None:
            raise Failure(f"{n} exited ({process.returncode if process else '?'}):\n{pair.log_tail(n)}")


# ---------------------------------------------------------------- hold

def hold(pair, args, results):
    count, period, message = args.connections, args.period, args.message
    engine = Engine(LAYOUT)
    sampler = Sampler(pair)
    before = snapshot(pair)
    log(f"hold: opening {count} tunnels ...")
    t0 = time.monotonic()
    conns = engine.open_many(count, "hold", parallel=args.parallel, timeout=max(120, count / 20))
    open_seconds = time.monotonic() - t0
    failed_open = [c for c in conns if c.state != OPEN]
    log(f"hold: {count - len(failed_open)} open in {open_seconds:.1f} s ({(count - len(failed_open)) / open_seconds:.0f}/s)"
        + (f"; {len(failed_open)} failed: {sorted(set(c.end for c in failed_open))}" if failed_open else ""))
    if failed_open:
        raise Failure(f"{len(failed_open)} of {count} tunnels failed to open")
    # Staggered periodic traffic: bucket i sends at i * tick within each period.
    tick = 0.05
    buckets = max(1, int(round(period / tick)))
    slots = [[] for _ in range(buckets)]
    for c in conns:
        slots[c.id % buckets].append(c)
    opened_snapshot = snapshot(pair)
    cpu0 = {n: cpu_seconds(pair.pid(n)) for n in NODES}
    started = time.monotonic()
    end = started + args.hold_seconds
    bucket = 0
    next_tick = started
    last_report = started
    rounds = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_tick:
            for c in slots[bucket]:
                if c.state == OPEN:
                    c.send(message)
                    engine.pump(c)
            bucket += 1
            if bucket == buckets:
                bucket = 0
                rounds += 1
            next_tick += tick
            sampler.sample(now)
            if now - last_report >= 10:
                last_report = now
                ended = sum(1 for c in conns if c.state == ENDED)
                behind = sum(c.outstanding for c in conns)
                log(f"hold: {now - started:.0f} s, {count - ended} open, {sum(c.verified for c in conns) / 1e6:.1f} MB "
                    f"verified, {behind} bytes in flight, RSS a/b {sampler.peak['node-a'] // 1024}/"
                    f"{sampler.peak['node-b'] // 1024} MiB peak")
                check_alive(pair)
        engine.poll(max(0.0, min(next_tick, end) - now))
    held = sum(1 for c in conns if c.state == OPEN)
    cpu = {n: round(cpu_seconds(pair.pid(n)) - cpu0[n], 2) for n in NODES}
    at_peak = snapshot(pair)
    for n in NODES:
        sampler.peak[n] = max(sampler.peak[n], at_peak[n]["rss_kib"])
    # Close: every connection half-closes; each must get all its bytes back and a clean end.
    log(f"hold: {held} held for {args.hold_seconds} s; closing ...")
    for c in conns:
        if c.state == OPEN:
            c.finish()
            engine.pump(c)
    deadline = time.monotonic() + max(60, count / 100)
    while engine.open_count() and time.monotonic() < deadline:
        engine.poll(0.1)
        sampler.sample(time.monotonic())
    sent = sum(c.sent for c in conns)
    verified = sum(c.verified for c in conns)
    corrupt = [c for c in conns if c.corrupt]
    bad_end = [c for c in conns if c.end != "eof"]
    lost = sum(c.sent - c.verified for c in conns if c.end != "eof" or c.verified != c.sent)
    check_alive(pair)
    settle(pair)
    after = snapshot(pair)
    r = {
        "connections": count, "held": held, "open_seconds": round(open_seconds, 1),
        "open_rate_per_s": round(count / open_seconds), "hold_seconds": args.hold_seconds, "period_s": period,
        "message_bytes": message, "rounds": rounds, "bytes_sent": sent, "bytes_verified": verified,
        "lost_bytes": lost, "corrupt_connections": len(corrupt), "failed_connections": len(bad_end),
        "failed_ends": sorted(set(str(c.end) for c in bad_end)),
        "cpu_seconds_during_hold": cpu,
        "before": before, "all_open": opened_snapshot, "peak_rss_kib": sampler.peak, "after_close": after,
        "kib_per_connection": {n: round((sampler.peak[n] - before[n]["rss_kib"]) / count, 1) for n in NODES},
        "fds_with_all_open": {n: opened_snapshot[n]["fds"] for n in NODES},
    }
    results["hold"] = r
    log(f"hold: {json.dumps(r)}")
    if lost or corrupt or bad_end or held != count:
        raise Failure(f"hold: {held}/{count} held, {lost} bytes lost, {len(corrupt)} corrupt, "
                      f"{len(bad_end)} failed ({r['failed_ends']})")
    over = {n: v for n, v in r["kib_per_connection"].items() if v > args.max_kib_per_connection}
    if over:
        raise Failure(f"hold: memory per connection over the budget of {args.max_kib_per_connection} KiB: {over}")


# ---------------------------------------------------------------- churn

def churn(pair, args, results):
    stats = {"completed": 0, "failed": 0, "failures": {}, "lost": 0, "opened": 0}
    state = {"running": True}
    message = 1024

    def on_open(conn):
        conn.send(message)
        conn.finish()

    def on_end(conn):
        if conn.end == "eof" and not conn.corrupt and conn.verified == conn.sent == message:
            stats["completed"] += 1
        else:
            stats["failed"] += 1
            key = str(conn.corrupt or conn.end)
            stats["failures"][key] = stats["failures"].get(key, 0) + 1
            stats["lost"] += max(0, conn.sent - conn.verified)

    engine = Engine(LAYOUT, on_open=on_open, on_end=on_end)
    before = snapshot(pair)
    halfway = None
    started = time.monotonic()
    end = started + args.churn_seconds
    last_report = started
    log(f"churn: {args.churn_parallel} at a time for {args.churn_seconds} s ...")
    while state["running"]:
        now = time.monotonic()
        if now >= end:
            break
        while engine.open_count() < args.churn_parallel:
            engine.connect("churn")
            stats["opened"] += 1
        engine.poll(0.01)
        if halfway is None and now >= started + args.churn_seconds / 2:
            # Mid-run figures (with connections in flight): RSS only, compared with the end.
            halfway = {n: rss_kib(pair.pid(n)) for n in NODES}
        if now - last_report >= 10:
            last_report = now
            log(f"churn: {now - started:.0f} s, {stats['completed']} completed "
                f"({stats['completed'] / (now - started):.0f}/s), {stats['failed']} failed")
            check_alive(pair)
    deadline = time.monotonic() + 30
    while engine.open_count() and time.monotonic() < deadline:
        engine.poll(0.05)
    seconds = time.monotonic() - started
    check_alive(pair)
    settle(pair)
    after = snapshot(pair)
    r = {
        "seconds": round(seconds, 1), "parallel": args.churn_parallel, "opened": stats["opened"],
        "completed": stats["completed"], "failed": stats["failed"], "failures": stats["failures"],
        "lost_bytes": stats["lost"], "rate_per_s": round(stats["completed"] / seconds),
        "before": before, "halfway_rss_kib": halfway, "after": after,
        "fd_delta": {n: after[n]["fds"] - before[n]["fds"] for n in NODES},
        "rss_delta_kib": {n: after[n]["rss_kib"] - before[n]["rss_kib"] for n in NODES},
        "rss_second_half_delta_kib": {n: after[n]["rss_kib"] - halfway[n] for n in NODES} if halfway else None,
    }
    results["churn"] = r
    log(f"churn: {json.dumps(r)}")
    problems = []
    if stats["failed"]:
        problems.append(f"{stats['failed']} connections failed: {stats['failures']}")
    for n in NODES:
        # Fewer is fine: idle pooled HBONE connections from the hold phase may time out.
        if r["fd_delta"][n] > 0:
            problems.append(f"{n} has {r['fd_delta'][n]:+d} descriptors after churn")
    if problems:
        raise Failure("churn: " + "; ".join(problems))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ambit", required=True, help="the ambit binary")
    parser.add_argument("--connections", type=int, default=10000, help="tunnels to hold (default 10000)")
    parser.add_argument("--hold-seconds", type=float, default=120, help="how long to hold them (default 120)")
    parser.add_argument("--period", type=float, default=5, help="seconds between a connection's messages (default 5)")
    parser.add_argument("--message", type=int, default=1024, help="bytes per message (default 1024)")
    parser.add_argument("--parallel", type=int, default=256, help="handshakes in flight while opening (default 256)")
    parser.add_argument("--churn-seconds", type=float, default=60, help="churn duration, 0 to skip (default 60)")
    parser.add_argument("--churn-parallel", type=int, default=64, help="churn connections at a time (default 64)")
    parser.add_argument("--max-kib-per-connection", type=float, default=64,
                        help="memory budget: peak RSS growth per held connection, per proxy (default 64 KiB)")
    parser.add_argument("--threads", type=int, help="event-loop threads per node (default: cores)")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (node logs)")
    args = parser.parse_args()
    limit = raise_fd_limit()
    # Each process (client, echo backend, each proxy) holds one descriptor per connection.
    if limit < args.connections + 1024:
        print(f"load: RLIMIT_NOFILE is {limit}, too low for {args.connections} connections (run as root)",
              file=sys.stderr)
        return 2

    def interrupted(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, interrupted)

    kill_leftovers(WORKDIR_PREFIX)
    kill_leftovers(f"pair.py echo {LAYOUT.server_ip} ")
    workdir = tempfile.mkdtemp(prefix=WORKDIR_PREFIX)
    pair = Pair(os.path.abspath(args.ambit), workdir, LAYOUT, drain_deadline="5s", log_level="notice",
                threads=args.threads)
    results = {"args": {k: v for k, v in vars(args).items() if k not in ("json", "keep")}, "ambit": args.ambit,
               "cores": os.cpu_count()}
    failures = []
    started = time.time()
    try:
        pair.start()
        # Warm up: certificates fetched, one pooled connection per loop exists.
        warm = Engine(LAYOUT)
        for c in warm.open_many(8, parallel=8):
            c.send(1024)
            c.finish()
            warm.pump(c)
        while warm.open_count():
            warm.poll(0.1)
        settle(pair)
        results["idle"] = snapshot(pair)
        log(f"nodes up: {json.dumps(results['idle'])} (work directory {workdir})")
        for phase in [hold, churn]:
            if phase is churn and args.churn_seconds <= 0:
                continue
            try:
                phase(pair, args, results)
                log(f"PASS {phase.__name__}")
            except Failure as error:
                failures.append(phase.__name__)
                log(f"FAIL {phase.__name__}: {error}")
                check_alive(pair)
    except KeyboardInterrupt:
        failures.append("interrupted")
    except Exception as error:  # noqa: BLE001
        failures.append("error")
        log(f"FAIL: {error}")
        traceback.print_exc()
    finally:
        pair.stop()
        results["seconds"] = round(time.time() - started, 1)
        results["failures"] = failures
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        if args.keep or failures:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"{'FAILED: ' + ', '.join(failures) if failures else 'load scenarios passed'} ({results['seconds']} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
