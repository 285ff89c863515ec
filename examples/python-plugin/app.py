"""py-tracker: a Drover device type written in Python (componentize-py).

It speaks the same small JSON protocol as the Rust device-type template, so the same
fixtures apply:

* enroll: ``{"id": "unit-1", "model": "T-1000"}``
* poll (any path): a JSON array of results ``[{"id": 7, "status": "COMPLETED"}]``;
  the answer is the pending operations, ``[{"id": 8, "code": "REBOOT", "payload": null}]``.

The contract (``wit/``) is the same as for Rust plugins: translate, never own state.
Errors are raised as ``Err(PluginError(...))``; the host then changes nothing.
"""

import json
from typing import List, Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import types as t


def refuse(code: t.ErrorCode, message: str) -> Err:
    return Err(t.PluginError(code=code, message=message))


class WitWorld(wit_world.WitWorld):
    def describe(self) -> t.DeviceTypeInfo:
        return t.DeviceTypeInfo(
            name="py-tracker",
            version="0.1.0",
            description="A tracker whose plugin is written in Python",
            operations=[
                t.OperationCode(code="REBOOT", kind=t.OperationKind.COMMAND,
                                description="Reboot the tracker", payload_schema=None),
                t.OperationCode(code="SET_INTERVAL", kind=t.OperationKind.COMMAND,
                                description="Reporting interval in seconds",
                                payload_schema='{"type":"object","required":["seconds"],'
                                               '"properties":{"seconds":{"type":"integer","minimum":10}}}'),
            ],
            delivery=[t.Delivery.POLL],
            content_types=["application/json"],
            max_operations_per_message=None,
        )

    def validate(self, code: str, payload: Optional[str]) -> None:
        if code == "REBOOT":
            if payload is not None:
                raise refuse(t.ErrorCode.INVALID, "REBOOT takes no payload")
        elif code == "SET_INTERVAL":
            try:
                seconds = json.loads(payload or "null")["seconds"]
            except (ValueError, TypeError, KeyError):
                raise refuse(t.ErrorCode.INVALID, 'SET_INTERVAL needs {"seconds": N}')
            if not isinstance(seconds, int) or seconds < 10:
                raise refuse(t.ErrorCode.INVALID, "SET_INTERVAL: seconds must be an integer >= 10")
        else:
            raise refuse(t.ErrorCode.UNKNOWN_OPERATION, f"unknown operation `{code}`")

    def enroll(self, message: t.Channel, body: bytes) -> t.Enrollment:
        try:
            request = json.loads(body)
        except ValueError as e:
            raise refuse(t.ErrorCode.MALFORMED, f"enrollment is not JSON: {e}")
        device_id = request.get("id") if isinstance(request, dict) else None
        if not isinstance(device_id, str) or not device_id:
            raise refuse(t.ErrorCode.INVALID, "`id` is required")
        metadata = [("model", str(request["model"]))] if "model" in request else []
        return t.Enrollment(device_id=device_id, name=None, ownership=t.Ownership.COPE,
                            owner=None, metadata=metadata, push=None)

    def encode(self, device: t.Device, operations: List[t.Operation], channel: t.ChannelKind) -> t.Encoded:
        body = [{"id": o.id, "code": o.code, "payload": o.payload} for o in operations]
        response = t.HttpResponse(status=200, content_type="application/json", headers=[],
                                  body=json.dumps(body).encode())
        return t.Encoded(output=t.Outbound_Http(response), delivered=[o.id for o in operations], session=None)

    def decode(self, device: t.Device, message: t.Channel, body: bytes) -> t.DeviceMessage:
        try:
            reports = json.loads(body)
        except ValueError as e:
            raise refuse(t.ErrorCode.MALFORMED, f"results are not JSON: {e}")
        if not isinstance(reports, list):
            raise refuse(t.ErrorCode.MALFORMED, "results must be a JSON array")
        statuses = {"COMPLETED": t.ResultStatus.COMPLETED, "ERROR": t.ResultStatus.ERROR}
        results = []
        for i, r in enumerate(reports):
            if not isinstance(r, dict) or not isinstance(r.get("id"), int):
                raise refuse(t.ErrorCode.MALFORMED, f"result {i}: `id` must be an integer")
            response = json.dumps(r["response"]) if "response" in r else None
            results.append(t.OperationResult(operation_id=r["id"],
                                             status=statuses.get(r.get("status"), t.ResultStatus.IN_PROGRESS),
                                             response=response))
        return t.DeviceMessage(results=results, check_in=None, telemetry=[], info=[],
                               reply=t.Reply_PendingOperations(), session=None)
