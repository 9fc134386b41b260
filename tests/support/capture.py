"""Record every message a run exchanges, and check it for note text (tests/test_privacy.py).

Nothing that leaves a site contains note text (docs/architecture.md). Three places see the
messages, and the privacy test records at all of them:

* a site's ClientApp: `capture_mod`, a Flower mod that writes each message the site gets
  and the reply it returns (or the exception it raises) to a file per site and process;
* the coordinator's ServerApp: `RecordingGrid`, a `Grid` that passes every call to
  Flower's and writes each message sent and each reply received, error replies included,
  as the strategies see them;
* the wire (deployment): `WireRecorder`, an HTTP reverse proxy between the SuperNodes and
  the SuperLink (Flower 1.42's Fleet API is protobuf over HTTP/1.1) that keeps every
  request and response body; `decode_wire` rebuilds the Messages from them.

`tests/support/capture_apps.py` wraps the project's ServerApp and ClientApp with the first
two; they write under the folder named by the environment variable FEDMEDLORA_CAPTURE_DIR.
Production runs name `server_app.app:app` and `client_app.app:app` and record nothing;
`capture_mod` itself passes messages through untouched when the variable is unset.

`message_record` turns a Message into plain data (metadata, error, every ArrayRecord with
its keys, dtypes, shapes and raw bytes, every MetricRecord and ConfigRecord);
`NoteTextFinder` looks for note strings in it, as text and as UTF-8 or UTF-16 bytes.
"""

from __future__ import annotations

import base64
import gzip
import http.server
import io
import json
import os
import re
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp import Grid

CAPTURE_ENV = "FEDMEDLORA_CAPTURE_DIR"


def capture_dir() -> Path | None:
    value = os.environ.get(CAPTURE_ENV)
    return Path(value) if value else None


# --------------------------------------------------------------------------- messages as data


def _value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_value(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return value


def record_of(record: Any) -> dict[str, Any]:
    """One record of a RecordDict as plain data, tagged with its kind."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    if isinstance(record, ArrayRecord):
        arrays = {}
        for key in record.keys():
            array = record[key]
            arrays[key] = {"dtype": str(array.dtype), "shape": list(array.shape), "stype": str(array.stype),
                           "data": bytes(array.data)}
        return {"kind": "arrays", "arrays": arrays}
    if isinstance(record, MetricRecord):
        return {"kind": "metrics", "items": {k: _value(v) for k, v in record.items()}}
    if isinstance(record, ConfigRecord):
        return {"kind": "config", "items": {k: _value(v) for k, v in record.items()}}
    return {"kind": type(record).__name__, "repr": repr(record)}  # a record type this file does not know


def message_record(msg: Any) -> dict[str, Any]:
    """A Message as plain data: all of its metadata, its error, all of its content."""
    md = msg.metadata
    metadata = {name: getattr(md, name, None) for name in (
        "run_id", "message_id", "src_node_id", "dst_node_id", "reply_to_message_id", "group_id",
        "created_at", "ttl", "message_type")}
    out: dict[str, Any] = {"metadata": metadata, "error": None, "content": None}
    if msg.has_error():
        out["error"] = {"code": int(msg.error.code), "reason": msg.error.reason}
    else:
        out["content"] = {name: record_of(record) for name, record in msg.content.items()}
    return out


def _to_json(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"__bytes__": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__bytes__"}:
            return base64.b64decode(obj["__bytes__"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


_write_lock = threading.Lock()


def append_record(path: Path, entry: dict[str, Any]) -> None:
    """One JSON line (bytes as base64), appended and flushed at once."""
    line = json.dumps(_to_json(entry)) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _write_lock, open(path, "a", encoding="utf-8") as handle:
        handle.write(line)


def load_records(folder: Path, pattern: str = "*.jsonl") -> list[dict[str, Any]]:
    """Every entry of the capture files in `folder` matching `pattern`."""
    entries = []
    for path in sorted(Path(folder).glob(pattern)):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entries.append({**_from_json(json.loads(line)), "file": path.name})
    return entries


def flower_error_reason(err: BaseException) -> str:
    """The reason Flower puts in the error reply of a ClientApp that raised `err`
    (flwr/supernode/runtime/run_clientapp.py)."""
    return str(type(err)) + ":<'" + str(err) + "'>"


def site_error_id(reason: str) -> str:
    """The site error id a failure reason gives (client_app/app.py, `failure_reason`)."""
    found = set(re.findall(r"\(site error ([0-9a-f]{8}); details in the site's log\)", reason))
    # Simulation repeats it: Ray's wrapper quotes the ClientApp's traceback before the reason.
    assert len(found) == 1, f"no single site error id in {reason!r}"
    return found.pop()


def logged_under(log_text: str, error_id: str) -> str:
    """What a site's log holds under `error_id`: its line and the traceback after it."""
    marker = f"site error {error_id}: "
    assert marker in log_text, f"site error {error_id} is not in the site's log"
    return log_text.split(marker, 1)[1].split("site error ", 1)[0]


# --------------------------------------------------------------------------- the site: a mod


def _site_label(context: Any) -> str:
    config = getattr(context, "node_config", {}) or {}
    if "site-name" in config:
        return str(config["site-name"])
    if "partition-id" in config:
        return f"partition-{config['partition-id']}"
    return f"node-{getattr(context, 'node_id', 'unknown')}"


def capture_mod(msg: Any, context: Any, call_next: Any) -> Any:
    """Flower mod: records the message a site receives and what it sends back.

    Inactive (a plain `call_next`) unless FEDMEDLORA_CAPTURE_DIR is set. An exception is
    recorded with the reason Flower will put in the error reply, then re-raised."""
    folder = capture_dir()
    if folder is None:
        return call_next(msg, context)
    site = _site_label(context)
    path = folder / f"site-{site}-{os.getpid()}.jsonl"
    base = {"side": "site", "site": site, "node_id": int(getattr(context, "node_id", 0) or 0)}
    append_record(path, {**base, "direction": "received", "message": message_record(msg)})
    try:
        reply = call_next(msg, context)
    except Exception as err:
        append_record(path, {**base, "direction": "raised", "reply_to": msg.metadata.message_id,
                             "message_type": msg.metadata.message_type,
                             "reason": flower_error_reason(err)})
        raise
    append_record(path, {**base, "direction": "sent", "message": message_record(reply)})
    return reply


# --------------------------------------------------------------------------- the coordinator: a Grid


class RecordingGrid(Grid):
    """Flower's Grid with every message sent and every reply received appended to `path`.

    `push_messages`/`pull_messages` and `send_and_receive` go to the Grid Flower gave the
    ServerApp; what they returned is recorded afterwards, so the run behaves the same."""

    def __init__(self, inner: Grid, path: Path) -> None:
        self._inner = inner
        self._path = Path(path)

    def _record(self, direction: str, messages: Iterable[Any]) -> None:
        for msg in messages:
            append_record(self._path, {"side": "coordinator", "direction": direction,
                                       "message": message_record(msg)})

    def set_run(self, run: Any) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Any:
        return self._inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self._inner.get_nodes()

    def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self._inner.push_messages(messages))
        self._record("sent", messages)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
        replies = list(self._inner.pull_messages(message_ids))
        self._record("received", replies)
        return replies

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Iterable[Any]:
        messages = list(messages)
        replies = list(self._inner.send_and_receive(messages, timeout=timeout))
        self._record("sent", messages)
        self._record("received", replies)
        return replies

    def __getattr__(self, name: str) -> Any:  # anything else the Grid implementation offers
        return getattr(self._inner, name)


# --------------------------------------------------------------------------- the wire: a proxy


@dataclass
class Exchange:
    """One HTTP request a SuperNode made and the SuperLink's response."""

    client: str  # the SuperNode's ip:port
    method: str
    path: str
    request_headers: list[tuple[str, str]]
    request_body: bytes
    status: int
    response_headers: list[tuple[str, str]]
    response_body: bytes  # decoded (no content-encoding)
    started: float


def _decode_body(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"content-encoding {encoding!r} is not decoded by the recorder")


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-connection", "content-length", "host"}


class WireRecorder:
    """An HTTP/1.1 reverse proxy on 127.0.0.1 that forwards to `target` (host:port) and
    keeps every exchange. Point the SuperNodes at `address` instead of the SuperLink.

        with WireRecorder("127.0.0.1:9092") as wire:
            ... flower-supernode --superlink {wire.address} --insecure ...
        wire.exchanges
    """

    def __init__(self, target: str, keep_bodies_of: Iterable[str] | None = None) -> None:
        import httpx

        self.target = target
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=f"http://{target}", timeout=None)
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
                started = time.time()
                request = recorder._client.build_request(self.command, self.path, headers=headers, content=body)
                response = recorder._client.send(request, stream=True)
                try:
                    raw = b"".join(response.iter_raw())
                finally:
                    response.close()
                out_headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
                self.send_response(response.status_code)
                for key, value in out_headers:
                    if key.lower() not in ("date", "server"):
                        self.send_header(key, value)
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                decoded = _decode_body(raw, response.headers.get("content-encoding"))
                with recorder._lock:
                    recorder.exchanges.append(Exchange(
                        f"{self.client_address[0]}:{self.client_address[1]}", self.command, self.path,
                        headers, body, response.status_code, out_headers, decoded, started))

            do_POST = do_GET = do_PUT = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="wire-recorder", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> WireRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def __enter__(self) -> WireRecorder:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@dataclass
class WireMessage:
    direction: str  # "site->coordinator" (pushed by a SuperNode) or "coordinator->site" (pulled)
    client: str
    record: dict[str, Any]  # message_record of the rebuilt Message
    missing_objects: list[str] = field(default_factory=list)


def decode_wire(exchanges: Iterable[Exchange]) -> list[WireMessage]:
    """The Messages in recorded Fleet API traffic: the replies the SuperNodes pushed
    (PushMessages + PushObject) and the instructions they pulled (PullMessages +
    PullObject), rebuilt with Flower's own deserialisation."""
    from flwr.common.serde import message_from_proto
    from flwr.proto.fleet_pb2 import PullMessagesResponse, PushMessagesRequest
    from flwr.proto.message_pb2 import PullObjectRequest, PullObjectResponse, PushObjectRequest
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    exchanges = list(exchanges)
    contents: dict[str, bytes] = {}
    for ex in exchanges:
        if ex.path.endswith("/push-object"):
            request = PushObjectRequest.FromString(ex.request_body)
            contents[request.object_id] = request.object_content
        elif ex.path.endswith("/pull-object") and ex.status == 200:
            request = PullObjectRequest.FromString(ex.request_body)
            response = PullObjectResponse.FromString(ex.response_body)
            if response.object_content:
                contents[request.object_id] = response.object_content
    found: list[WireMessage] = []
    for ex in exchanges:
        if ex.path.endswith("/push-messages"):
            request = PushMessagesRequest.FromString(ex.request_body)
            pairs = zip(request.messages_list, request.message_object_trees)
            direction = "site->coordinator"
        elif ex.path.endswith("/pull-messages") and ex.status == 200:
            response = PullMessagesResponse.FromString(ex.response_body)
            pairs = zip(response.messages_list, response.message_object_trees)
            direction = "coordinator->site"
        else:
            continue
        for proto, tree in pairs:
            missing = [oid for oid in _tree_ids(tree) if oid not in contents]
            if missing:  # e.g. objects the SuperLink already held, so not sent again
                found.append(WireMessage(direction, ex.client, message_record(message_from_proto(proto)), missing))
                continue
            message = inflate_object_from_contents(tree.object_id, contents, keep_object_contents=True)
            found.append(WireMessage(direction, ex.client, message_record(message)))
    return found


def _tree_ids(tree: Any) -> Iterator[str]:
    yield tree.object_id
    for child in tree.children:
        yield from _tree_ids(child)


# --------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class Finding:
    where: str
    text: str
    encoding: str

    def __str__(self) -> str:
        shown = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return f"{self.where}: note text {shown!r} ({self.encoding})"


_ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be")
_PREFIX = 8  # every needle is at least 8 bytes long in every encoding (>= 8 characters)


class NoteTextFinder:
    """Finds any of a set of note strings (sentences, entity strings) in text and bytes:
    in text as is; in bytes as UTF-8, UTF-16-LE or UTF-16-BE. Linear in the bytes
    searched, whatever the number of strings."""

    def __init__(self, needles: Iterable[str]) -> None:
        self.needles = sorted({n for n in needles if len(n) >= _PREFIX})
        self._by_prefix: dict[bytes, list[tuple[str, str, bytes]]] = {}
        for needle in self.needles:
            for encoding in _ENCODINGS:
                data = needle.encode(encoding)
                self._by_prefix.setdefault(data[:_PREFIX], []).append((needle, encoding, data))

    def in_bytes(self, data: bytes) -> list[tuple[str, str]]:
        if len(data) < _PREFIX:
            return []
        windows = {data[i:i + _PREFIX] for i in range(len(data) - _PREFIX + 1)}
        hits = []
        for prefix in windows & self._by_prefix.keys():
            for needle, encoding, full in self._by_prefix[prefix]:
                if full in data:
                    hits.append((needle, encoding))
        return hits

    def in_text(self, text: str) -> list[tuple[str, str]]:
        hits = self.in_bytes(text.encode("utf-8", "surrogatepass"))
        return [(needle, "text" if encoding == "utf-8" else f"text holding {encoding}") for needle, encoding in hits]

    def search(self, obj: Any, where: str = "") -> list[Finding]:
        """Every needle in `obj` (nested dicts, lists, strings, bytes): keys included."""
        findings: list[Finding] = []
        if isinstance(obj, dict):
            for key, value in obj.items():
                if isinstance(key, str):
                    findings += [Finding(f"{where} key {key[:40]!r}", n, e) for n, e in self.in_text(key)]
                findings += self.search(value, f"{where}/{key}")
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                findings += self.search(value, f"{where}[{i}]")
        elif isinstance(obj, str):
            findings += [Finding(where, n, e) for n, e in self.in_text(obj)]
        elif isinstance(obj, (bytes, bytearray)):
            findings += [Finding(where, n, e) for n, e in self.in_bytes(bytes(obj))]
        return sorted(set(findings), key=str)


def note_strings(documents: Iterable[Any], min_sentence: int = 20, min_entity: int = 8) -> set[str]:
    """The strings of these documents that must never leave their site: every sentence of
    `min_sentence` characters or more (as the task segments them) and every annotated
    entity string of `min_entity` characters or more."""
    from clinical_ie.segment import split_sentences

    strings: set[str] = set()
    for doc in documents:
        for start, end in split_sentences(doc.text):
            if end - start >= min_sentence:
                strings.add(doc.text[start:end])
        for line in doc.text.splitlines():
            if len(line.strip()) >= min_sentence:
                strings.add(line.strip())
        for entity in doc.entities:
            text = " ".join(doc.text[s:e] for s, e in entity.spans)
            for candidate in (text, entity.text):
                if len(candidate) >= min_entity:
                    strings.add(candidate)
    return strings


def unpacked(content: Mapping[str, Any], name: str) -> tuple[dict[str, Any], list[str]]:
    """ArrayRecord `name` of a message's content (as `message_record` gives it) with its
    tensors unpacked, read here from the packed bytes and the manifest the `transport`
    record holds (wire/transport.py packs every ArrayRecord); and what does not add up (bytes
    the manifest does not account for). A record that is not packed comes back as it is."""
    record = content[name]
    manifest = content.get("transport", {}).get("items", {}).get(f"layout.{name}")
    if record.get("kind") != "arrays" or manifest is None:
        return record, []
    if list(record["arrays"]) != ["packed"]:
        return record, [f"a manifest for {name}, but arrays {list(record['arrays'])[:3]} instead of one packed array"]
    blob = np.load(io.BytesIO(record["arrays"]["packed"]["data"]), allow_pickle=False)
    if blob.dtype != np.uint8 or blob.ndim != 1:
        return record, [f"packed array of {name} is {blob.dtype} {blob.shape}, not bytes"]
    arrays, start = {}, 0
    for key, dtype, shape in json.loads(manifest):
        tensor = np.frombuffer(blob.tobytes(), dtype=np.dtype(dtype).newbyteorder("<"),
                               count=int(np.prod(shape)), offset=start).reshape(shape)
        start += tensor.nbytes
        saved = io.BytesIO()
        np.save(saved, tensor, allow_pickle=False)
        arrays[key] = {"dtype": str(tensor.dtype), "shape": list(tensor.shape), "stype": "numpy.ndarray",
                       "data": saved.getvalue()}
    problems = [] if start == blob.size else [f"{name}: {blob.size - start} packed bytes beyond the manifest's tensors"]
    return {"kind": "arrays", "arrays": arrays}, problems


def adapter_problems(record: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    """What is wrong with an ArrayRecord (as `record_of` gives it) that should hold exactly
    the LoRA tensors `expected` (key -> shape), float32, in numpy form; [] when nothing."""
    if record.get("kind") != "arrays":
        return [f"not an ArrayRecord but {record.get('kind')}"]
    arrays = record["arrays"]
    problems = []
    missing = [k for k in expected if k not in arrays]
    extra = [k for k in arrays if k not in expected]
    if missing:
        problems.append(f"{len(missing)} LoRA tensor(s) missing, e.g. {missing[0]}")
    if extra:
        problems.append(f"{len(extra)} array(s) that are not LoRA tensors of the adapter, e.g. {extra[0]}")
    for key, array in arrays.items():
        if key not in expected:
            continue
        if array["dtype"] != "float32":
            problems.append(f"{key}: dtype {array['dtype']}, expected float32")
        if tuple(array["shape"]) != tuple(expected[key]):
            problems.append(f"{key}: shape {tuple(array['shape'])}, expected {tuple(expected[key])}")
        if array["stype"] != "numpy.ndarray":
            problems.append(f"{key}: stype {array['stype']}, expected numpy.ndarray")
        else:
            decoded = np.load(io.BytesIO(array["data"]), allow_pickle=False)
            if decoded.dtype != np.float32 or tuple(decoded.shape) != tuple(expected[key]):
                problems.append(f"{key}: payload holds {decoded.dtype} {decoded.shape}, not what the header says")
            elif len(array["data"]) - decoded.nbytes > 256:
                problems.append(f"{key}: payload is {len(array['data']) - decoded.nbytes} bytes longer than the tensor")
    return problems


__all__ = [
    "CAPTURE_ENV", "capture_dir", "capture_mod", "RecordingGrid", "WireRecorder", "Exchange", "WireMessage",
    "decode_wire", "message_record", "record_of", "append_record", "load_records", "flower_error_reason",
    "site_error_id", "logged_under",
    "NoteTextFinder", "Finding", "note_strings", "adapter_problems", "unpacked",
]
