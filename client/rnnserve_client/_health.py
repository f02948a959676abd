"""The standard gRPC health check (grpc.health.v1) without the grpcio-health-checking package:
the two messages are tiny, so they are encoded by hand to keep the client's dependencies at
grpcio and numpy."""

from __future__ import annotations

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = 1
_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_request(service: str) -> bytes:
    """HealthCheckRequest{service = 1}."""
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def decode_status(data: bytes) -> int:
    """HealthCheckResponse.status (field 1, varint); 0 when absent."""
    i = 0
    while i < len(data):
        key = data[i]
        i += 1
        if key == 0x08:
            value, shift = 0, 0
            while True:
                byte = data[i]
                i += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    return value
        return 0  # unexpected field: the real message has only `status`
    return 0


def status_name(status: int) -> str:
    return _STATUS_NAMES.get(status, str(status))


def identity(data: bytes) -> bytes:
    return data
