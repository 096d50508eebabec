#!/usr/bin/env python3
"""A third-party client of the DebVisor agent, for the agent_sim_clients test.

Uses only Python grpcio and grpcio-reflection: no generated code. It connects
with mutual TLS using a DebVisor client bundle (the TOML of `debvisorctl`),
discovers the services by server reflection, builds the message classes from
the reflected descriptors, calls a few methods and prints one JSON object of
what it saw on stdout. The Rust side asserts on it; this script only fails
(exit 2) when it cannot produce that object.

    reflect_client.py --config bundle.toml
"""

import argparse
import json
import sys
import tomllib

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICES = [
    "debvisor.node.v1.NodeService",
    "debvisor.units.v1.UnitService",
    "debvisor.audit.v1.AuditService",
    "debvisor.health.v1.NodeHealthService",
    "debvisor.config.v1.ConfigService",
]
HEALTH = "grpc.health.v1.Health"
TIMEOUT = 20


def channel_from_bundle(path):
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    ctx = cfg["contexts"][cfg["context"]]
    creds = grpc.ssl_channel_credentials(
        root_certificates=ctx["ca"].encode(),
        private_key=ctx["key"].encode(),
        certificate_chain=ctx["crt"].encode(),
    )
    options = [("grpc.ssl_target_name_override", ctx["server_name"])]
    return grpc.secure_channel(ctx["endpoints"][0], creds, options=options)


class Reflected:
    """Calls methods whose types come from the server's reflection."""

    def __init__(self, channel):
        self.channel = channel
        self.db = ProtoReflectionDescriptorDatabase(channel)
        self.pool = DescriptorPool(self.db)

    def services(self):
        return list(self.db.get_services())

    def call(self, service, method, fields=None):
        m = self.pool.FindServiceByName(service).FindMethodByName(method)
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        req = req_cls()
        if fields:
            json_format.ParseDict(fields, req)
        stub = self.channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        resp = stub(req, timeout=TIMEOUT)
        return json_format.MessageToDict(resp, preserving_proto_field_name=True)


def error_of(e):
    return {"code": e.code().name, "details": e.details() or ""}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="DebVisor client bundle (TOML)")
    args = ap.parse_args()

    out = {}
    channel = channel_from_bundle(args.config)
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    r = Reflected(channel)

    out["services"] = sorted(r.services())

    status = r.call("debvisor.node.v1.NodeService", "GetStatus")
    out["status"] = {
        "hostname": status.get("hostname", ""),
        "simulated": status.get("simulated", False),
        "agent_version": status.get("agent_version", ""),
    }

    units = r.call("debvisor.units.v1.UnitService", "ListUnits").get("units", [])
    out["units"] = [u["name"] for u in units]
    service_units = [u["name"] for u in units if u["name"].endswith(".service")]
    if service_units:
        unit = service_units[0]
        try:
            res = r.call("debvisor.units.v1.UnitService", "Restart", {"name": unit})
            out["restart"] = {
                "unit": unit,
                "result": res.get("result", ""),
                "active_state": res.get("unit", {}).get("active_state", ""),
            }
        except grpc.RpcError as e:
            out["restart"] = {"unit": unit, "error": error_of(e)}

    try:
        h = r.call(
            "debvisor.health.v1.NodeHealthService",
            "List",
            {"kind": "service", "include_history": True},
        )
        out["node_health"] = {
            "state": h.get("state", ""),
            "gate": h.get("gate", {}).get("state", ""),
            "checks": [
                {
                    "name": c.get("name", ""),
                    "kind": c.get("kind", ""),
                    "status": c.get("last", {}).get("status", ""),
                    "history": len(c.get("history", [])),
                }
                for c in h.get("checks", [])
            ],
        }
    except grpc.RpcError as e:
        out["node_health"] = {"error": error_of(e)}

    out["health"] = {}
    # Every DebVisor service the server reflects, so a new one is checked
    # without editing this list.
    reflected = [s for s in out["services"] if s.startswith("debvisor.")]
    for svc in [""] + sorted(set(SERVICES) | set(reflected)):
        try:
            h = r.call(HEALTH, "Check", {"service": svc})
            out["health"][svc] = h.get("status", "UNKNOWN")
        except grpc.RpcError as e:
            out["health"][svc] = error_of(e)["code"]

    unknown = channel.unary_unary(
        "/debvisor.node.v2.NodeService/GetStatus",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        unknown(b"", timeout=TIMEOUT)
        out["unknown_method"] = {"code": "OK", "details": ""}
    except grpc.RpcError as e:
        out["unknown_method"] = error_of(e)

    channel.close()
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report anything as one line
        print(f"reflect_client: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
