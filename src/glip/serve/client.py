"""A standard-library client of ``POST /detect`` (no ``requests`` needed): what the tests and the
load benchmark send, and a starting point for scripts.

>>> status, result = post_detect("http://127.0.0.1:8000", Path("cat.jpg").read_bytes(),
...                              {"classes": "cat,remote"})                          # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any


def encode_form(fields: Mapping[str, str], image: bytes | None) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of text ``fields`` and the file field ``image`` (None: no file).

    Returns:
        ``(body, content type with its boundary)``.
    """
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if image is not None:
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="upload"\r\n'
                   "Content-Type: application/octet-stream\r\n\r\n".encode() + image + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def post_detect(url: str, image: bytes | None, fields: Mapping[str, str],
                timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """``POST url/detect`` with the file ``image`` and the text ``fields`` (classes, caption, spans,
    threshold).

    Returns:
        ``(HTTP status, JSON body)``: the detections on 200, ``{"error": ...}`` otherwise.

    Raises:
        urllib.error.URLError: the server cannot be reached.
    """
    body, content_type = encode_form(fields, image)
    request = urllib.request.Request(url.rstrip("/") + "/detect", data=body, headers={"Content-Type": content_type})
    return open_json(request, timeout)


def open_json(request: urllib.request.Request | str, timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)`` of a request, 4xx and 5xx included."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())
