#!/usr/bin/env python3
"""A subscriber for the collector's `nhisensor.v1.Subscriptions/Subscribe` feed, in Python.

It proves that the gRPC contract in proto/ works for consumers that are not written in
Rust: the stubs are generated from the .proto files at run time (grpc_tools.protoc), not
taken from this repository's Rust code.

    subscribe.py --proto-dir proto --target 127.0.0.1:PORT
                 [--ca ca.pem [--cert c.pem --key c.key] [--server-name localhost]]
                 [--kind EVENT_KIND_FILE_OPEN ...] [--namespace NS ...] [--identity ID ...]
                 [--sensor-id ID ...] [--node-name NODE ...]
                 --count N --timeout SECS [--wait-for-ready]

Without --ca the channel is plaintext; with --ca it is TLS, and mutual TLS when --cert and
--key are given too. --server-name overrides the name the server certificate is checked
against (default: the host of --target).

Prints `READY` on stderr once the server has accepted the call (its response headers have
arrived: the subscription is in place), then each event as one JSON line on stdout
(protobuf's JSON mapping, proto field names, enum names), flushed line by line.

Exit status:
  0   N events arrived (with --count 0: as soon as the call is accepted)
  2   the call failed: the gRPC status code name and details are printed on stderr
      (connection refused, TLS refused, INVALID_ARGUMENT, ...)
  3   --timeout seconds passed (counted from the start) before N events arrived
  4   the server ended the stream (status OK) before N events
  1   the stubs could not be generated (bad --proto-dir, protoc error)
  64  bad command line

Needs grpcio, grpcio-tools and protobuf (`cargo xtask setup` installs them into
target/pyenv; `cargo xtask test` passes that interpreter to the tests as NHI_PYTHON).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
import tempfile
import time
from importlib import resources

EXIT_OK = 0
EXIT_STUBS = 1
EXIT_GRPC = 2
EXIT_TIMEOUT = 3
EXIT_ENDED = 4
EXIT_USAGE = 64

PROTO_PACKAGE_DIR = pathlib.Path("nhisensor/v1")


class Usage(Exception):
    """A command-line error (exit 64)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit status, 2, would read as a gRPC error
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(
        prog="subscribe.py",
        description="Subscribe to an nhi-sensor collector and print events as JSON lines.",
    )
    p.add_argument("--proto-dir", default="proto", type=pathlib.Path,
                   help="directory holding nhisensor/v1/*.proto (default: proto)")
    p.add_argument("--target", required=True, help="HOST:PORT of the collector")
    p.add_argument("--ca", type=pathlib.Path, help="CA certificate (PEM): use TLS")
    p.add_argument("--cert", type=pathlib.Path, help="client certificate (PEM): mutual TLS")
    p.add_argument("--key", type=pathlib.Path, help="client key (PEM): mutual TLS")
    p.add_argument("--server-name", help="name to verify the server certificate against")
    p.add_argument("--kind", action="append", default=[], metavar="KIND",
                   help="event kind filter, e.g. EVENT_KIND_FILE_OPEN (repeatable)")
    p.add_argument("--namespace", action="append", default=[], metavar="NS",
                   help="Kubernetes namespace filter (repeatable)")
    p.add_argument("--identity", action="append", default=[], metavar="ID",
                   help="identity filter (Event.identity.id, repeatable)")
    p.add_argument("--sensor-id", action="append", default=[], metavar="ID",
                   help="sensor filter (repeatable)")
    p.add_argument("--node-name", action="append", default=[], metavar="NODE",
                   help="node filter (repeatable)")
    p.add_argument("--count", type=int, required=True, metavar="N",
                   help="exit 0 after N events (0: once the call is accepted)")
    p.add_argument("--timeout", type=float, required=True, metavar="SECS",
                   help="exit 3 if N events have not arrived after SECS seconds")
    p.add_argument("--wait-for-ready", action="store_true",
                   help="wait (within --timeout) for the server to come up instead of "
                        "failing at once with UNAVAILABLE")
    args = p.parse_args(argv)
    if args.count < 0:
        p.error("--count must be at least 0")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    if (args.cert is None) != (args.key is None):
        p.error("--cert and --key go together")
    if args.cert is not None and args.ca is None:
        p.error("--cert/--key need --ca (mutual TLS)")
    if args.server_name is not None and args.ca is None:
        p.error("--server-name needs --ca")
    return args


def generate_stubs(proto_dir: pathlib.Path, out_dir: pathlib.Path) -> None:
    """Runs protoc (from grpc_tools) on proto_dir/nhisensor/v1/*.proto, writing the Python
    modules (`nhisensor.v1.*_pb2`, `*_pb2_grpc`) into out_dir."""
    from grpc_tools import protoc  # noqa: PLC0415 (imported late: --help works without it)

    files = sorted((proto_dir / PROTO_PACKAGE_DIR).glob("*.proto"))
    if not files:
        raise RuntimeError(f"no .proto files in {proto_dir / PROTO_PACKAGE_DIR}")
    # The well-known types (google/protobuf/timestamp.proto, ...) that grpc_tools bundles.
    well_known = resources.files("grpc_tools") / "_proto"
    cmd = [
        "grpc_tools.protoc",
        f"--proto_path={proto_dir}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(f.relative_to(proto_dir)) for f in files),
    ]
    if protoc.main(cmd) != 0:
        raise RuntimeError(f"protoc failed on {proto_dir} (its messages are above)")


def load_stubs(out_dir: pathlib.Path):
    """Imports the generated modules: (collector_pb2, collector_pb2_grpc)."""
    sys.path.insert(0, str(out_dir))
    pb2 = importlib.import_module("nhisensor.v1.collector_pb2")
    pb2_grpc = importlib.import_module("nhisensor.v1.collector_pb2_grpc")
    return pb2, pb2_grpc


def build_request(pb2, args: argparse.Namespace):
    """The SubscribeRequest of the command line's filters. Kinds are EventKind value names;
    the `EVENT_KIND_` prefix may be left out."""
    kind_enum = pb2.SubscribeRequest.DESCRIPTOR.fields_by_name["kinds"].enum_type
    kinds = []
    for name in args.kind:
        full = name if name.startswith("EVENT_KIND_") else f"EVENT_KIND_{name}"
        value = kind_enum.values_by_name.get(full.upper())
        if value is None:
            known = ", ".join(v.name for v in kind_enum.values)
            raise Usage(f"unknown event kind {name!r} (known: {known})")
        kinds.append(value.number)
    return pb2.SubscribeRequest(
        kinds=kinds,
        namespaces=args.namespace,
        identities=args.identity,
        sensor_ids=args.sensor_id,
        node_names=args.node_name,
    )


def open_channel(grpc, args: argparse.Namespace):
    if args.ca is None:
        return grpc.insecure_channel(args.target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=args.ca.read_bytes(),
        private_key=args.key.read_bytes() if args.key else None,
        certificate_chain=args.cert.read_bytes() if args.cert else None,
    )
    options = []
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    return grpc.secure_channel(args.target, creds, options=options)


def subscribe(grpc, pb2, pb2_grpc, args: argparse.Namespace, started: float) -> int:
    from google.protobuf.json_format import MessageToJson  # noqa: PLC0415

    request = build_request(pb2, args)
    deadline = started + args.timeout
    received = 0
    with open_channel(grpc, args) as channel:
        stub = pb2_grpc.SubscriptionsStub(channel)
        call = stub.Subscribe(
            request,
            timeout=max(deadline - time.monotonic(), 0.001),
            wait_for_ready=args.wait_for_ready,
        )
        try:
            # Returns once the response headers are in (or the call has ended): the server
            # has accepted the subscription.
            call.initial_metadata()
            if not call.done() or call.code() == grpc.StatusCode.OK:
                print("READY", file=sys.stderr, flush=True)
            if args.count == 0 and not call.done():
                call.cancel()
                return EXIT_OK
            for event in call:
                print(MessageToJson(event, indent=None, preserving_proto_field_name=True),
                      flush=True)
                received += 1
                if received >= args.count:
                    call.cancel()
                    return EXIT_OK
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                print(f"timeout: {received} of {args.count} events after {args.timeout:g}s",
                      file=sys.stderr)
                return EXIT_TIMEOUT
            print(f"{code.name}: {e.details()}", file=sys.stderr)
            return EXIT_GRPC
    if args.count == 0:
        return EXIT_OK
    print(f"the server ended the stream (OK) after {received} of {args.count} events",
          file=sys.stderr)
    return EXIT_ENDED


def main(argv: list[str]) -> int:
    started = time.monotonic()
    try:
        args = parse_args(argv)
        import grpc  # noqa: PLC0415
    except ImportError as e:
        print(f"subscribe.py: {e} (run `cargo xtask setup`; use target/pyenv/bin/python)",
              file=sys.stderr)
        return EXIT_STUBS
    with tempfile.TemporaryDirectory(prefix="nhi-stubs-") as tmp:
        try:
            generate_stubs(args.proto_dir, pathlib.Path(tmp))
            pb2, pb2_grpc = load_stubs(pathlib.Path(tmp))
        except (RuntimeError, ImportError) as e:
            print(f"subscribe.py: generating the stubs: {e}", file=sys.stderr)
            return EXIT_STUBS
        try:
            return subscribe(grpc, pb2, pb2_grpc, args, started)
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): not an error of ours. Keep the interpreter's
            # final flush from failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        except Usage as e:
            print(f"subscribe.py: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as e:  # unreadable --ca/--cert/--key
            print(f"subscribe.py: error: {e}", file=sys.stderr)
            return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
