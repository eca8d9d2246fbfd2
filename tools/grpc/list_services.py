#!/usr/bin/env python3
"""Lists a collector's gRPC services with Python's stock reflection client.

grpcio-reflection's ProtoReflectionDescriptorDatabase speaks only
`grpc.reflection.v1alpha`, as many stock clients do; the end-to-end query test runs this
over mutual TLS to check that the collector answers them. Prints one service per line.

    list_services.py --target 127.0.0.1:7443 --ca ca.pem --cert op.pem --key op.key
"""

import argparse
import sys

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of the collector")
    parser.add_argument("--ca", required=True, help="CA certificate (PEM)")
    parser.add_argument("--cert", required=True, help="client certificate (PEM)")
    parser.add_argument("--key", required=True, help="client key (PEM)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")
    args = parser.parse_args()

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    with grpc.secure_channel(args.target, credentials) as channel:
        grpc.channel_ready_future(channel).result(timeout=args.timeout)
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    for service in services:
        print(service)
    return 0


if __name__ == "__main__":
    sys.exit(main())
