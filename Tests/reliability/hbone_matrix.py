#!/usr/bin/env python3
"""Stress for inbound HBONE with many streams on one connection (RELIABILITY.md,
"Many tunnels on one HBONE connection").

One real `ambit run` node (node-b of pair.py's layout, 127.0.42.x) owns a local HBONE
workload with an echo backend behind it. The independent Python HBONE client
(Tests/Interop/hbone_peer.py, `ssl` + `h2`) opens one mTLS connection per run to the
workload's :15008 and runs K concurrent CONNECT streams; each sends N random bytes,
half-closes, and reads the echo back to its END_STREAM. A run fails if any stream's
bytes differ (SHA-256), a stream is reset, END_STREAM is missing either way, or the
connection goes away.

    Tests/reliability/hbone-matrix                        # the worst rows, 100 runs each
    Tests/reliability/hbone-matrix --runs 10 --rows 4x8MiB --threads 1

Prints one `reliability:` line per row and exits 0 only if no run failed. Not a CI test
(it takes minutes); `swift test` runs the matrix once per row (HBONEStreamMatrixTests).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pair import Failure, Layout, Pair, kill_leftovers, run  # noqa: E402

LAYOUT = Layout("127.0.42", 17400)
WORKDIR_PREFIX = "ambit-rel-matrix-"
PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Interop", "hbone_peer.py")
WORST_ROWS = "4x4MiB,8x2MiB,4x8MiB,2x16MiB,3x8MiB,32x512KiB"


def client_certificate(workdir):
    """A client certificate from the node's CA for spiffe://cluster.local/ns/default/sa/python."""
    ca = os.path.join(workdir, "ca")
    key, csr, cert, ext = (os.path.join(workdir, name) for name in ("py.key", "py.csr", "py.crt", "py.ext"))
    with open(ext, "w") as f:
        f.write("subjectAltName=critical,URI:spiffe://cluster.local/ns/default/sa/python\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\n")
    run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
    run(["openssl", "req", "-new", "-key", key, "-subj", "/O=cluster.local", "-out", csr])
    run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(ca, "ca-cert.pem"), "-CAkey",
         os.path.join(ca, "ca-key.pem"), "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", cert])
    return ["--cert", cert, "--key", key, "--ca", os.path.join(ca, "root-cert.pem")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ambit", required=True)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rows", default=WORST_ROWS)
    parser.add_argument("--threads", type=int, default=None, help="node.threads of the node (default: cores)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", help="write every row's results here")
    args = parser.parse_args()

    kill_leftovers(WORKDIR_PREFIX)
    workdir = tempfile.mkdtemp(prefix=WORKDIR_PREFIX)
    pair = Pair(args.ambit, workdir, LAYOUT, threads=args.threads)
    failed = 0
    summary = []
    try:
        pair.write_config()
        pair.start_echo()
        pair.start_node("node-b")
        pair.wait_ready("node-b")
        files = client_certificate(workdir)
        authority = f"{LAYOUT.server_ip}:{LAYOUT.echo_port}"
        for row in args.rows.split(","):
            started = time.time()
            result = subprocess.run(
                [sys.executable, PEER, "matrix", "--connect", f"{LAYOUT.server_ip}:15008", "--authority", authority,
                 "--rows", row, "--repeat", str(args.runs), "--timeout", "120"] + files,
                capture_output=True, text=True)
            lines = result.stdout.strip().splitlines()
            if result.returncode != 0 or not lines:
                raise Failure(f"hbone_peer.py matrix exited {result.returncode}: {result.stderr[-2000:]}")
            outcome = json.loads(lines[-1])
            bad = [r for r in outcome["rows"] if not r["ok"]]
            failed += len(bad)
            seconds = time.time() - started
            summary.append({"row": row, "runs": len(outcome["rows"]), "failed": len(bad), "seconds": round(seconds, 1),
                            "failures": bad[:3]})
            print(f"reliability: hbone matrix {row}: {len(bad)} of {len(outcome['rows'])} runs lost data "
                  f"({seconds:.0f} s)", flush=True)
            for r in bad[:3]:
                print(f"  run {r['repeat']}: {json.dumps({k: v for k, v in r.items() if k != 'rows'})[:600]}")
        log = pair.log_tail("node-b", 400)
        errors = [line for line in log.splitlines() if "HBONE connection ended" in line or "stream" in line.lower()]
        if errors:
            print("node-b logged:\n  " + "\n  ".join(errors[-10:]))
    except Failure as error:
        print(f"FAILED: {error}", flush=True)
        failed += 1
    finally:
        pair.stop()
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rows": summary, "threads": args.threads}, f, indent=2)
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
