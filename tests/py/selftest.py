#!/usr/bin/env python3
"""Self-test of the scripts in this directory, with no collector and no kernel.

    selftest.py [--certs DIR]

* validate_ocsf.py on fixtures/ocsf_valid.jsonl (exit 0) and fixtures/ocsf_invalid.jsonl
  (exit 1, with the expected messages).
* subscribe.py against a stand-in for the collector's `Subscriptions` service written here
  in Python (served from stubs generated the same way), over plaintext and, when DIR (default:
  target/certs) holds the test PKI of `cargo xtask certs`, over mutual TLS: filters reach
  the server, READY precedes the events, events come out as JSON lines, and the exit status
  is right for N events (0), a gRPC error (2: refused connection, INVALID_ARGUMENT, a client
  certificate from another CA, no client certificate, a wrong server name), a timeout (3)
  and a stream that ends early (4).

Ends with the line `N passed, M failed`; exits 0 only when nothing failed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTO = ROOT / "proto"
sys.path.insert(0, str(HERE))
# The in-process servers' handshake failures are expected here: keep gRPC's C core quiet.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import subscribe  # noqa: E402


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        if ok:
            self.passed += 1
            print(f"ok      {name}")
        else:
            self.failed += 1
            print(f"FAILED  {name}\n{detail}")


def run(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True,
                          text=True, timeout=timeout)


def show(p: subprocess.CompletedProcess) -> str:
    return f"    exit {p.returncode}\n    stdout: {p.stdout!r}\n    stderr: {p.stderr!r}"


def test_validator(r: Results) -> None:
    p = run("validate_ocsf.py", str(HERE / "fixtures/ocsf_valid.jsonl"))
    r.check("validate_ocsf: valid fixtures pass", p.returncode == 0
            and "1007 process_activity: 1 valid, 0 invalid" in p.stdout
            and "4001 network_activity: 1 valid, 0 invalid" in p.stdout, show(p))
    p = run("validate_ocsf.py", str(HERE / "fixtures/ocsf_invalid.jsonl"), "--max-errors", "9")
    expected = [
        "line 1 (1007 process_activity): invalid",
        "$: 'device' is a required property",
        "$.activity_id: 42 is not one of",
        "$.actor: needs at least one of process, user",
        "('argv' was unexpected)",
        "$.process.name: None is not of type 'string'",
        "$.time: 'yesterday' is not of type 'integer'",
        "'device' belongs to profile host, which metadata.profiles does not list",
        "line 4 (9999 (no such class in OCSF 1.8.0)): invalid",
        "line 5 (not JSON): invalid",
        "4 event(s), 0 valid, 4 invalid",
    ]
    missing = [e for e in expected if e not in p.stdout]
    r.check("validate_ocsf: invalid fixtures fail, with paths", p.returncode == 1 and not missing,
            f"    missing: {missing}\n{show(p)}")
    p = run("validate_ocsf.py", str(HERE / "fixtures/ocsf_valid.jsonl"), "--version", "1.1.0")
    r.check("validate_ocsf: --version", p.returncode == 1 and "OCSF schema 1.1.0" in p.stdout
            and "'vendor_name' is a required property" in p.stdout, show(p))


class FakeSubscriptions:
    """Stands in for the collector: answers Subscribe with the events of the request's kinds.

    * kinds containing EVENT_KIND_UNSPECIFIED: INVALID_ARGUMENT, as the contract says.
    * sensor_ids == ["end"]: one event, then the stream ends with OK.
    * otherwise three events (sequence 1..3, one per requested kind in turn), then the stream
      stays open until the client goes away.
    """

    def __init__(self, grpc, events_pb2):
        self.grpc = grpc
        self.events_pb2 = events_pb2
        self.requests = []

    def Subscribe(self, request, context):  # noqa: N802 (gRPC method name)
        self.requests.append(request)
        kinds = list(request.kinds) or [self.events_pb2.EVENT_KIND_FILE_OPEN]
        if self.events_pb2.EVENT_KIND_UNSPECIFIED in kinds:
            context.abort(self.grpc.StatusCode.INVALID_ARGUMENT,
                          "EVENT_KIND_UNSPECIFIED is not a valid kind")
        context.send_initial_metadata(())
        time.sleep(0.2)  # READY must not wait for the first event
        count = 1 if list(request.sensor_ids) == ["end"] else 3
        for seq in range(1, count + 1):
            ev = self.events_pb2.Event(kind=kinds[(seq - 1) % len(kinds)], sequence=seq)
            ev.sensor.sensor_id = "sensor-test"
            ev.sensor.stream_id = "s1"
            ev.time.FromSeconds(1767225600 + seq)
            yield ev
        if count == 1:
            return
        while context.is_active():
            time.sleep(0.05)


def serve(grpc, pb2_grpc, servicer, credentials=None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb2_grpc.add_SubscriptionsServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_subscriber(r: Results, certs: pathlib.Path) -> None:
    import grpc  # noqa: PLC0415

    tmp = tempfile.TemporaryDirectory(prefix="nhi-selftest-")
    subscribe.generate_stubs(PROTO, pathlib.Path(tmp.name))
    pb2, pb2_grpc = subscribe.load_stubs(pathlib.Path(tmp.name))
    import importlib  # noqa: PLC0415

    events_pb2 = importlib.import_module("nhisensor.v1.events_pb2")
    r.check("subscribe: stubs generate and import", hasattr(pb2_grpc, "SubscriptionsStub"))

    port = free_port()
    p = run("subscribe.py", "--proto-dir", str(PROTO), "--target", f"127.0.0.1:{port}",
            "--count", "1", "--timeout", "10")
    r.check("subscribe: connection refused -> 2",
            p.returncode == 2 and "UNAVAILABLE" in p.stderr and "READY" not in p.stderr, show(p))
    p = run("subscribe.py", "--target", "x:1", "--count", "1", "--timeout", "1", "--cert", "c")
    r.check("subscribe: bad command line -> 64", p.returncode == 64, show(p))

    servicer = FakeSubscriptions(grpc, events_pb2)
    server, port = serve(grpc, pb2_grpc, servicer)
    target = f"127.0.0.1:{port}"
    common = ["--proto-dir", str(PROTO), "--target", target]

    p = run("subscribe.py", *common, "--kind", "EVENT_KIND_FILE_OPEN", "--kind",
            "NETWORK_CONNECT", "--namespace", "prod", "--identity",
            "system:serviceaccount:prod:backup", "--sensor-id", "s-1", "--node-name", "n-1",
            "--count", "2", "--timeout", "20")
    lines = p.stdout.splitlines()
    try:
        events = [json.loads(line) for line in lines]
    except json.JSONDecodeError:
        events = []
    req = servicer.requests[-1] if servicer.requests else None
    r.check("subscribe: filters reach the server", req is not None
            and list(req.kinds) == [events_pb2.EVENT_KIND_FILE_OPEN,
                                    events_pb2.EVENT_KIND_NETWORK_CONNECT]
            and list(req.namespaces) == ["prod"]
            and list(req.identities) == ["system:serviceaccount:prod:backup"]
            and list(req.sensor_ids) == ["s-1"] and list(req.node_names) == ["n-1"], str(req))
    r.check("subscribe: 2 events as JSON lines -> 0", p.returncode == 0
            and p.stderr.startswith("READY") and len(events) == 2
            and events[0].get("kind") == "EVENT_KIND_FILE_OPEN"
            and events[1].get("kind") == "EVENT_KIND_NETWORK_CONNECT"
            and events[0].get("sensor", {}).get("sensor_id") == "sensor-test"
            and events[0].get("sequence") == "1"
            and events[0].get("time") == "2026-01-01T00:00:01Z", show(p))

    started = time.monotonic()
    p = run("subscribe.py", *common, "--count", "5", "--timeout", "2")
    elapsed = time.monotonic() - started
    r.check("subscribe: timeout -> 3", p.returncode == 3 and len(p.stdout.splitlines()) == 3
            and "READY" in p.stderr and 1.5 < elapsed < 10, f"{show(p)}\n    took {elapsed:.1f}s")
    p = run("subscribe.py", *common, "--count", "0", "--timeout", "10")
    r.check("subscribe: --count 0 -> 0 once accepted", p.returncode == 0
            and p.stderr.strip() == "READY" and p.stdout == "", show(p))
    p = run("subscribe.py", *common, "--kind", "EVENT_KIND_UNSPECIFIED", "--count", "1",
            "--timeout", "10")
    r.check("subscribe: INVALID_ARGUMENT -> 2", p.returncode == 2
            and "INVALID_ARGUMENT: EVENT_KIND_UNSPECIFIED is not a valid kind" in p.stderr,
            show(p))
    p = run("subscribe.py", *common, "--sensor-id", "end", "--count", "3", "--timeout", "10")
    r.check("subscribe: stream ended early -> 4", p.returncode == 4
            and len(p.stdout.splitlines()) == 1, show(p))
    p = run("subscribe.py", *common, "--kind", "NO_SUCH_KIND", "--count", "1", "--timeout", "5")
    r.check("subscribe: unknown kind -> 64", p.returncode == 64
            and "unknown event kind" in p.stderr, show(p))
    server.stop(0)

    needed = ["ca.pem", "collector.pem", "collector.key", "subscriber.pem", "subscriber.key",
              "rogue.pem", "rogue.key"]
    if not all((certs / f).is_file() for f in needed):
        print(f"SKIPPED mutual TLS: no test PKI in {certs} (run `cargo xtask certs`)")
        return
    creds = grpc.ssl_server_credentials(
        [((certs / "collector.key").read_bytes(), (certs / "collector.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes(), require_client_auth=True)
    server, port = serve(grpc, pb2_grpc, FakeSubscriptions(grpc, events_pb2), creds)

    def tls(*extra: str) -> subprocess.CompletedProcess:
        return run("subscribe.py", "--proto-dir", str(PROTO), "--count", "1", "--timeout",
                   "10", "--ca", str(certs / "ca.pem"), *extra)

    def client(name: str) -> list[str]:
        return ["--cert", str(certs / f"{name}.pem"), "--key", str(certs / f"{name}.key")]

    p = tls("--target", f"localhost:{port}", *client("subscriber"))
    r.check("subscribe: mutual TLS (localhost) -> 0", p.returncode == 0
            and len(p.stdout.splitlines()) == 1, show(p))
    p = tls("--target", f"127.0.0.1:{port}", *client("subscriber"))
    r.check("subscribe: mutual TLS (127.0.0.1, IP SAN) -> 0", p.returncode == 0, show(p))
    p = tls("--target", f"127.0.0.1:{port}", "--server-name", "nhi-collector",
            *client("sensor"))
    r.check("subscribe: mutual TLS, --server-name nhi-collector -> 0", p.returncode == 0,
            show(p))
    p = tls("--target", f"127.0.0.1:{port}", *client("rogue"))
    r.check("subscribe: client certificate of another CA refused -> 2",
            p.returncode == 2 and "UNAVAILABLE" in p.stderr, show(p))
    p = tls("--target", f"127.0.0.1:{port}")
    r.check("subscribe: no client certificate refused -> 2", p.returncode == 2, show(p))
    p = tls("--target", f"127.0.0.1:{port}", "--server-name", "wrong.example",
            *client("subscriber"))
    r.check("subscribe: wrong server name refused -> 2", p.returncode == 2, show(p))
    p = run("subscribe.py", "--proto-dir", str(PROTO), "--count", "1", "--timeout", "10",
            "--ca", str(certs / "other-ca.pem"), *client("subscriber"),
            "--target", f"127.0.0.1:{port}")
    r.check("subscribe: server certificate of an untrusted CA refused -> 2",
            p.returncode == 2, show(p))
    server.stop(0)
    tmp.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--certs", type=pathlib.Path, default=ROOT / "target/certs",
                    help="the test PKI of `cargo xtask certs` (default: target/certs)")
    args = ap.parse_args()
    r = Results()
    test_validator(r)
    test_subscriber(r, args.certs)
    # The plain closing line CI reads.
    print(f"{r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    threading.current_thread().name = "selftest"
    sys.exit(main())
