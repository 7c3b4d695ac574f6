"""Plain data as JSON, with bytes (a sentencepiece model) written as `{"$base64": "..."}`.

The one form charrnn uses wherever JSON has to hold bytes: the corpus cache's metadata
(charrnn.text.corpus), a safetensors export's metadata and the ONNX export's corpus section
(charrnn.checkpoint.formats).
"""

from __future__ import annotations

import base64
import json

BYTES_KEY = "$base64"


def encode_bytes(value):
    """`json.dumps`'s `default`: bytes as `{"$base64": ...}`; anything else is not plain data."""
    if isinstance(value, (bytes, bytearray)):
        return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not plain data")


def decode_bytes(obj: dict):
    """`json.loads`'s `object_hook`: `{"$base64": ...}` back to bytes (strict base64)."""
    if len(obj) == 1 and BYTES_KEY in obj:
        return base64.b64decode(obj[BYTES_KEY], validate=True)
    return obj


def dumps(value, **options) -> str:
    return json.dumps(value, default=encode_bytes, **options)


def loads(text: str):
    return json.loads(text, object_hook=decode_bytes)
