"""image_url values from untrusted requests -> encoded image bytes, checked from the header before any decoding.

Accepted: base64 `data:` URLs; a local file path (or file:// URL) only when the server allows it.
Refused: http(s) URLs (a device may have no network, and fetching would let a request make the server
connect anywhere), more bytes or pixels than the limits, anything Pillow cannot identify.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from .errors import ApiError, bad_request
from .limits import ServeLimits

DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+(=[\w.+-]+)?)*),(?P<data>.*)", re.S)


def image_bytes(url: str, limits: ServeLimits, param: str) -> bytes:
    """The encoded image an image_url names, after the header checks."""
    if url.startswith("data:"):
        data = _from_data_url(url, limits, param)
    elif re.match(r"(?i)^[a-z][a-z0-9+.-]*://", url) and not url.lower().startswith("file://"):
        raise bad_request("remote image URLs are not fetched (the server may have no network): send the image "
                          "as a base64 data: URL", param, "unsupported_image_url")
    else:
        data = _from_local_file(url, limits, param)
    check_header(data, limits, param)
    return data


def _from_data_url(url: str, limits: ServeLimits, param: str) -> bytes:
    m = DATA_URL.fullmatch(url)
    if m is None or ";base64" not in m.group("params"):
        raise bad_request("image data: URLs must be base64: data:image/png;base64,...", param, "invalid_image_url")
    encoded = re.sub(r"\s+", "", m.group("data"))
    if len(encoded) * 3 // 4 > limits.max_image_bytes + 3:
        raise _too_large(len(encoded) * 3 // 4, limits, param)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the image data: URL is not valid base64", param, "invalid_image_url") from None
    if len(data) > limits.max_image_bytes:
        raise _too_large(len(data), limits, param)
    return data


def _from_local_file(url: str, limits: ServeLimits, param: str) -> bytes:
    if not limits.allow_local_images:
        raise bad_request("image_url must be a base64 data: URL (local files are read only when the server "
                          "runs with --allow-local-images)", param, "invalid_image_url")
    path = Path(unquote(urlparse(url).path) if url.lower().startswith("file://") else url)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise bad_request(f"image file {path} is not a regular file", param, "invalid_image_url")
        if size > limits.max_image_bytes:
            raise _too_large(size, limits, param)
        return path.read_bytes()
    except OSError as e:
        raise bad_request(f"cannot read image file {path}: {e.strerror or type(e).__name__}", param,
                          "invalid_image_url") from None


def check_header(data: bytes, limits: ServeLimits, param: str) -> None:
    """Refuse what Pillow cannot identify and sizes over the limit, reading only the header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        raise bad_request(f"the image has more than {limits.max_image_pixels} pixels", param, "image_too_large") from None
    except Exception:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
        raise bad_request("the image is not an image file Pillow can read", param, "invalid_image") from None
    if width < 1 or height < 1:
        raise bad_request(f"the image is empty ({width}x{height})", param, "invalid_image")
    if width * height > limits.max_image_pixels:
        raise bad_request(f"the image is {width}x{height} pixels, more than the {limits.max_image_pixels} allowed",
                          param, "image_too_large")


def _too_large(nbytes: int, limits: ServeLimits, param: str) -> ApiError:
    return bad_request(f"the image is {nbytes} bytes, more than the {limits.max_image_bytes} allowed", param,
                       "image_too_large")
