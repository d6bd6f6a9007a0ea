"""``glip serve``: the batching queue alone, then the API on a real uvicorn server on a loopback
port with the bundled GLIP-Nano: detections equal ``GLIP.predict``, bad requests get a one-line
4xx and the server goes on, concurrent requests share forward passes only when they may."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="glip serve needs the serve extra (fastapi, uvicorn, python-multipart)")

from glip import GLIP  # noqa: E402
from glip.cli import main  # noqa: E402
from glip.data.shapes_world import SHAPES, encode_png, render_scene, sample_scene  # noqa: E402
from glip.serve import BackgroundServer, ServeOptions, create_app  # noqa: E402
from glip.serve.app import _counting_receive, _UploadTooLarge  # noqa: E402
from glip.serve.batching import BatchQueue, QueueClosed, QueueFull  # noqa: E402
from glip.serve.client import encode_form, open_json, post_detect  # noqa: E402
from glip.serve.detector import BatchDetector  # noqa: E402
from glip.serve.inputs import PromptSpec  # noqa: E402

CLASSES = ",".join(SHAPES)
# A long window and batches of 2: two concurrent requests with one key are batched as soon as the
# second arrives, however loaded the machine; a lone request waits the window out (0.5 s).
OPTIONS = ServeOptions(max_batch=2, batch_wait_ms=500, max_upload_mb=0.25)


# ---------------------------------------------------------------------------------------------
# The batching queue alone (no model, no HTTP)
# ---------------------------------------------------------------------------------------------


def _recording_runner(calls: list, gate: threading.Event | None = None):
    def run(key, payloads):
        if gate is not None:
            gate.wait(5)
        calls.append((key, list(payloads)))
        return [ValueError(f"bad {p}") if p == "bad" else (key, p) for p in payloads]
    return run


def test_queue_batches_same_key_in_order_and_keeps_others_queued() -> None:
    calls: list = []
    gate = threading.Event()
    queue = BatchQueue(_recording_runner(calls, gate), max_batch=2, wait_s=0.0)
    try:
        blocker = queue.submit("x", 0)  # occupies the worker while the others queue up
        time.sleep(0.05)
        futures = [queue.submit(key, payload) for key, payload in
                   [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("a", "bad")]]
        gate.set()
        assert blocker.result(5) == ("x", 0)
        assert [future.result(5) for future in futures[:4]] == [("a", 1), ("b", 2), ("a", 3), ("a", 4)]
        with pytest.raises(ValueError, match="bad bad"):  # a per-job error fails that job alone
            futures[4].result(5)
    finally:
        queue.close()
    # FIFO by the oldest job; same-key jobs batched up to max_batch; "b" is not mixed with "a".
    assert calls == [("x", [0]), ("a", [1, 3]), ("b", [2]), ("a", [4, "bad"])]
    assert (queue.stats.requests, queue.stats.forward_passes, queue.stats.largest_batch) == (6, 4, 2)


def test_queue_refuses_jobs_past_its_limit() -> None:
    gate = threading.Event()
    queue = BatchQueue(_recording_runner([], gate), max_batch=1, wait_s=0.0, max_queued=2)
    try:
        running = queue.submit("a", 0)
        deadline = time.monotonic() + 5
        while queue.queued and time.monotonic() < deadline:  # the worker has taken job 0
            time.sleep(0.01)
        waiting = [queue.submit("a", 1), queue.submit("a", 2)]
        with pytest.raises(QueueFull):
            queue.submit("a", 3)
        gate.set()
        assert [future.result(5) for future in (running, *waiting)] == [("a", 0), ("a", 1), ("a", 2)]
    finally:
        gate.set()
        queue.close()


def test_queue_survives_a_failing_batch_and_close_fails_the_waiting() -> None:
    def run(key, payloads):
        if key == "boom":
            raise RuntimeError("model failed")
        return list(payloads)

    queue = BatchQueue(run, max_batch=4, wait_s=0.0)
    with pytest.raises(RuntimeError, match="model failed"):
        queue.submit("boom", 1).result(5)
    assert queue.submit("fine", 2).result(5) == 2
    assert queue.stats.failed_batches == 1
    queue.close()
    with pytest.raises(QueueClosed):
        queue.submit("fine", 3)


# ---------------------------------------------------------------------------------------------
# The API on a real server
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _nano() -> GLIP:
    return GLIP.from_pretrained("glip_nano")


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(_nano(), OPTIONS, model_name="glip_nano")) as running:
        yield running


def test_each_prompt_is_encoded_once_while_cached() -> None:
    detector = BatchDetector(_nano(), prompt_cache_size=2)
    circle = PromptSpec(classes=("circle",))
    first = detector.encoded(circle)
    assert detector.encoded(circle) is first  # no second BERT pass
    detector.encoded(PromptSpec(classes=("square",)))
    detector.encoded(PromptSpec(classes=("star",)))  # the least recently used (circle) is dropped
    assert detector.encoded(circle) is not first


def _scene(index: int) -> np.ndarray:
    return render_scene(sample_scene(7, "test", index))


def _post(server: BackgroundServer, fields: dict[str, str], image: bytes | None) -> tuple[int, dict]:
    return post_detect(server.url, image, fields)


def _health(server: BackgroundServer) -> dict:
    status, payload = open_json(server.url + "/health")
    assert status == 200
    return payload


def _assert_equals_predict(payload: dict, image: np.ndarray, threshold: float, **prompt) -> None:
    expected = _nano().predict(image, threshold=threshold, **prompt)
    assert (payload["width"], payload["height"]) == (image.shape[1], image.shape[0])
    assert len(expected) > 0, "the comparison needs detections"
    assert payload["labels"] == expected.labels.tolist()
    assert payload["phrases"] == expected.phrases
    torch.testing.assert_close(torch.tensor(payload["scores"]), expected.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(payload["boxes"]), expected.boxes, atol=1e-3, rtol=0)


def test_detect_equals_predict_for_classes_and_caption(server: BackgroundServer) -> None:
    image = _scene(0)
    status, payload = _post(server, {"classes": CLASSES, "threshold": "0.1"}, encode_png(image))
    assert status == 200, payload
    _assert_equals_predict(payload, image, 0.1, classes=list(SHAPES))

    caption = "a circle and a square"
    spans = [[2, 8], [15, 21]]
    status, payload = _post(server, {"caption": caption, "spans": json.dumps(spans)}, encode_png(image))
    assert status == 200, payload
    assert payload["threshold"] == _nano().default_threshold  # no threshold field: the model's default
    _assert_equals_predict(payload, image, _nano().default_threshold, caption=caption,
                           spans=[tuple(span) for span in spans])


def _concurrently(server: BackgroundServer, requests: list[tuple[dict, bytes]]) -> list[tuple[int, dict]]:
    results: list = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def send(index: int) -> None:
        barrier.wait()
        results[index] = _post(server, *requests[index])

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_concurrent_requests_are_batched_by_prompt_and_size(server: BackgroundServer) -> None:
    first, second = _scene(0), _scene(2)  # same size: may share a forward
    wider = np.ascontiguousarray(np.concatenate([first, first[:, :112]], axis=1))  # resizes differently
    other_prompt = {"classes": "circle,square", "threshold": "0.1"}
    prompt = {"classes": CLASSES, "threshold": "0.1"}
    before = _health(server)
    results = _concurrently(server, [(prompt, encode_png(first)), (prompt, encode_png(second)),
                                     (prompt, encode_png(wider)), (other_prompt, encode_png(first))])
    after = _health(server)
    assert [status for status, _ in results] == [200] * 4, results
    for (_, payload), image in zip(results[:3], (first, second, wider)):
        _assert_equals_predict(payload, image, 0.1, classes=list(SHAPES))
    _assert_equals_predict(results[3][1], first, 0.1, classes=["circle", "square"])
    # Four requests, three forward passes: only the two same-size, same-prompt images shared one.
    assert after["requests"] - before["requests"] == 4
    assert after["forward_passes"] - before["forward_passes"] == 3
    assert after["largest_batch"] == 2


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header declares ``width x height`` pixels (a decompression bomb)."""
    png = encode_png(np.zeros((1, 1, 3), dtype=np.uint8))
    header = struct.pack(">II", width, height) + png[24:29]  # IHDR data: size, depth, colour, ...
    chunk = b"IHDR" + header
    return png[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]


SCENE_PNG = encode_png(render_scene(sample_scene(7, "test", 0)))
BAD_REQUESTS = {
    "not an image": ({"classes": "circle"}, b"hello, I am text", 400, "not an image"),
    "empty file": ({"classes": "circle"}, b"", 400, "empty"),
    "truncated image": ({"classes": "circle"}, SCENE_PNG[: len(SCENE_PNG) // 2], 400, "truncated or corrupt"),
    "decompression bomb": ({"classes": "circle"}, _bomb_png(), 400, "decompression bomb"),
    "upload too large": ({"classes": "circle"}, SCENE_PNG + bytes(300 * 1024), 413, "too large"),
    "upload far too large": ({"classes": "circle"}, bytes(2 * 1024 * 1024), 413, "too large"),
    "no image": ({"classes": "circle"}, None, 400, "no image"),
    "image as a path": ({"classes": "circle", "image": "/etc/passwd"}, None, 400, "must be a file upload"),
    "both prompts": ({"classes": "circle", "caption": "a circle"}, SCENE_PNG, 400, "not both"),
    "no prompt": ({"threshold": "0.5"}, SCENE_PNG, 400, "give classes"),
    "empty classes": ({"classes": " , ,"}, SCENE_PNG, 400, "empty prompt"),
    "blank caption": ({"caption": "   "}, SCENE_PNG, 400, "empty prompt"),
    "spans not JSON": ({"caption": "a circle", "spans": "[[2, 8]"}, SCENE_PNG, 400, "not JSON"),
    "spans reversed": ({"caption": "a circle", "spans": "[[8, 2]]"}, SCENE_PNG, 400, "not a range"),
    "spans past the end": ({"caption": "a circle", "spans": "[[2, 99]]"}, SCENE_PNG, 400, "not a range"),
    "spans not pairs": ({"caption": "a circle", "spans": "[[2, 8, 9]]"}, SCENE_PNG, 400, "pair of integers"),
    "spans with classes": ({"classes": "circle", "spans": "[[0, 1]]"}, SCENE_PNG, 400, "go with caption"),
    "threshold not a number": ({"classes": "circle", "threshold": "high"}, SCENE_PNG, 400, "must be a number"),
    "threshold above 1": ({"classes": "circle", "threshold": "1.5"}, SCENE_PNG, 400, "in [0, 1]"),
    "threshold nan": ({"classes": "circle", "threshold": "nan"}, SCENE_PNG, 400, "in [0, 1]"),
    "unknown field": ({"classes": "circle", "path": "/etc/passwd"}, SCENE_PNG, 400, "unknown form field"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_one_line_4xx(server: BackgroundServer, case: str) -> None:
    fields, image, expected_status, reason = BAD_REQUESTS[case]
    status, payload = _post(server, fields, image)
    assert status == expected_status, payload
    assert set(payload) == {"error"} and reason in payload["error"] and "\n" not in payload["error"]


def test_a_streamed_upload_is_cut_at_the_limit(server: BackgroundServer) -> None:
    """Without Content-Length (chunked), the body is counted as it arrives and refused past the limit."""
    body, content_type = encode_form({"classes": "circle"}, SCENE_PNG + bytes(1024 * 1024))
    host, port = urllib.parse.urlsplit(server.url).hostname, urllib.parse.urlsplit(server.url).port
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        chunks = (body[start:start + 65536] for start in range(0, len(body), 65536))
        connection.request("POST", "/detect", body=chunks, headers={"Content-Type": content_type},
                           encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413
        assert "too large" in json.loads(response.read())["error"]
    finally:
        connection.close()


def test_the_body_is_counted_as_it_arrives() -> None:
    """The receive wrapper stops a body at the limit, whatever Content-Length said (or did not)."""
    messages = [{"type": "http.request", "body": bytes(600), "more_body": True}] * 3

    async def receive() -> dict:
        return messages.pop(0)

    async def read_all(limit: int) -> int:
        counted, total = _counting_receive(receive, limit), 0
        for _ in range(3):
            total += len((await counted())["body"])
        return total

    assert asyncio.run(read_all(1800)) == 1800
    messages[:] = [{"type": "http.request", "body": bytes(600), "more_body": True}] * 3
    with pytest.raises(_UploadTooLarge):
        asyncio.run(read_all(1000))


def test_server_keeps_serving_after_bad_requests(server: BackgroundServer) -> None:
    for fields, image, _, _ in BAD_REQUESTS.values():
        _post(server, fields, image)
    status, payload = open_json(urllib.request.Request(server.url + "/detect"))  # GET: not allowed
    assert status == 405 and set(payload) == {"error"}
    assert _health(server)["status"] == "ok"
    status, payload = _post(server, {"classes": CLASSES}, SCENE_PNG)
    assert status == 200 and payload["phrases"], payload


def test_page_is_self_contained(server: BackgroundServer) -> None:
    with urllib.request.urlopen(server.url + "/", timeout=30) as response:
        page = response.read().decode()
        policy = response.headers["Content-Security-Policy"]
    assert response.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in policy  # the browser may load nothing from elsewhere
    assert "://" not in page  # no CDN, no external script, style or font
    assert 'id="canvas"' in page and 'id="threshold"' in page and 'type="file"' in page


def test_exif_orientation_is_applied_to_uploads(server: BackgroundServer) -> None:
    """A JPEG saved sideways with EXIF orientation 6 (rotate 90) is read upright, as load_image does."""
    upright = Image.fromarray(_scene(0)).crop((0, 0, 224, 160))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", exif=exif, quality=95)
    status, payload = _post(server, {"classes": CLASSES}, buffer.getvalue())
    assert status == 200, payload
    assert (payload["width"], payload["height"]) == (224, 160)


@pytest.mark.slow  # a fresh interpreter imports torch and loads the model: 15-40 s here
def test_cli_serve_starts_answers_and_stops_on_ctrl_c() -> None:
    """``glip serve`` as a user runs it: port 0 picks a free port, printed in its first line; Ctrl-C
    stops it with exit status 0."""
    command = [sys.executable, "-m", "glip", "serve", "--model", "glip_nano", "--port", "0", "--max-batch", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = process.stdout.readline()
        url = re.search(r"http://\S+?/", first_line).group(0)
        status, health = open_json(url + "health")
        assert status == 200 and health["model"] == "glip_nano" and health["max_batch"] == 2
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
        assert "stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.stderr.close()


def test_cli_serve_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--model", "glip_nano", "--port", str(port)]) == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
