"""What the server accepts from a request, and how it queues them (docs/SERVING.md lists the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from mote_edge.errors import MoteError


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 16 * 1024 * 1024  # the whole JSON body (base64 images included)
    max_image_bytes: int = 8 * 1024 * 1024  # one decoded image file
    max_image_pixels: int = 4096 * 4096  # width x height from the image header, before decoding
    max_images: int = 4  # per request
    max_messages: int = 256
    max_stop: int = 4  # stop strings, as OpenAI
    default_max_tokens: int = 256  # when the request names none (also capped by the context left)
    max_queue: int = 4  # requests waiting while one is served; more get 429
    request_timeout_s: float = 120.0  # from arrival (queue wait included) to the last token
    allow_local_images: bool = False  # image_url may name a file on the server's disk

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_bytes", "max_image_pixels", "max_images", "max_messages",
                     "default_max_tokens", "max_queue"):
            if getattr(self, name) < 1:
                raise MoteError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.request_timeout_s > 0:
            raise MoteError(f"request-timeout must be > 0 seconds, got {self.request_timeout_s}")
