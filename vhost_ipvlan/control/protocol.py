"""The control protocol: newline-delimited JSON requests and responses (docs/control-api.md).

Pure: bytes in, ``Request`` or ``errors.RequestError`` (a subclass: its ``code``) out;
responses as bytes.

Rules:
- One request per line, one response per request, in order:
  ``{"id": ID, "method": "slave.add", "params": {...}}`` ->
  ``{"id": ID, "result": ...}`` or ``{"id": ID, "error": {"code": CODE, "message": LINE}}``.
- ``id`` is optional (``null`` in the answer), an integer of at most 2**53 or a
  string of at most 128 characters; ``params`` is an object (default ``{}``);
  any other top-level key is an error.
- A line is at most ``MAX_LINE`` bytes including the newline; a longer one cannot
  be framed, so it gets a ``request_too_large`` error and the connection is closed.
- Error messages are one line of at most ``MAX_MESSAGE`` characters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import ParamsNotObject, RequestError, RequestTooLarge, UnknownMethod

MAX_LINE = 64 * 1024
MAX_MESSAGE = 400
MAX_ID = 2**53
METHODS = (
    "port.list", "port.add", "port.change", "port.remove",
    "slave.list", "slave.add", "slave.change", "slave.remove", "slave.rx_filter",
    "stats",
)

RequestId = int | str | None


@dataclass(frozen=True, slots=True)
class Request:
    id: RequestId
    method: str
    params: dict[str, Any]


def _id(value: Any) -> RequestId:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RequestError(f"id: expected an integer or a string, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) > MAX_ID:
        raise RequestError("id: integer out of range (at most 2**53 in magnitude)")
    if isinstance(value, str) and len(value) > 128:
        raise RequestError("id: string longer than 128 characters")
    return value


def parse(line: bytes) -> Request:
    """Decode one request line (with or without its newline)."""
    if len(line) > MAX_LINE:
        raise RequestTooLarge(f"request longer than {MAX_LINE} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("request is not UTF-8") from None
    try:
        doc = json.loads(text)
        json.dumps(doc, ensure_ascii=False).encode()  # lone surrogates cannot be stored
    except RecursionError:
        raise RequestError("request nested too deeply") from None
    except UnicodeEncodeError:
        raise RequestError("request contains an invalid unicode escape (lone surrogate)") from None
    except ValueError as e:
        raise RequestError(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RequestError(f"request: expected a JSON object, got {_kind(doc)}")
    rid = _id(doc.get("id"))
    try:
        for key in doc:
            if key not in ("id", "method", "params"):
                raise RequestError(f"{key}: unknown key (expected id, method, params)")
        method = doc.get("method")
        if not isinstance(method, str):
            raise RequestError(f"method: expected a string, got {_kind(method)}")
        if method not in METHODS:
            raise UnknownMethod(f"method: {method[:64]!r} is not one of {', '.join(METHODS)}")
        params = doc.get("params", {})
        if not isinstance(params, dict):
            raise ParamsNotObject(f"params: expected an object, got {_kind(params)}")
    except RequestError as e:
        e.id = rid
        raise
    return Request(rid, method, params)


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number",
            bool: "boolean", type(None): "null"}.get(type(value), type(value).__name__)


def one_line(message: str) -> str:
    text = " ".join(message.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def result(request_id: RequestId, value: Any) -> bytes:
    return json.dumps({"id": request_id, "result": value}, separators=(",", ":")).encode() + b"\n"


def error(request_id: RequestId, code: str, message: str) -> bytes:
    body = {"code": code, "message": one_line(message)}
    return json.dumps({"id": request_id, "error": body}, separators=(",", ":")).encode() + b"\n"


def request(request_id: RequestId, method: str, params: dict[str, Any] | None = None) -> bytes:
    """Encode a request (for the client)."""
    doc: dict[str, Any] = {"id": request_id, "method": method}
    if params:
        doc["params"] = params
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"
