"""Image front-end (DESIGN.md section 3): LLaVA's `pad` + transformers' CLIPImageProcessor.

    img = load_image("cat.jpg")                 # EXIF-rotated RGB PIL image, fully decoded
    x = preprocess(img, clip_defaults(224))     # float32 [3, 224, 224], CHW

Steps of `preprocess`, each as in the reference code:
  1. pad ("pad" aspect ratio, LLaVA expand2square): paste onto a square canvas of side max(w, h)
     filled with the mean colour int(m * 255), offset ((side - w) // 2, (side - h) // 2);
  2. resize the shortest edge to `shortest_edge` with PIL bicubic; the long edge becomes
     int(shortest_edge * long / short) (transformers' get_resize_output_image_size);
  3. center crop: top = (h - crop_h) // 2, left = (w - crop_w) // 2, zero-padded if too small;
  4. rescale by 1/255 (float64 product cast to float32), normalize (x - mean) / std in float32.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

from mote_edge.errors import ConfigError, ImageError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_PIXELS = 64_000_000  # refuse larger images before decoding them
ASPECT_RATIOS = ("pad", "square")
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

ImageInput = Union[str, Path, bytes, bytearray, Image.Image]


@dataclass
class ImagePreprocessConfig:
    """What `preprocess` does; mirrors a CLIPImageProcessor preprocessor_config.json.

    aspect_ratio: "pad" = LLaVA's expand2square before the CLIP steps; "square" = the CLIP steps
    alone (LLaVA's non-pad branch: resize the shortest edge, then center crop).
    """

    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    rescale_factor: float = 1 / 255
    resample: int = 3  # PIL.Image.Resampling.BICUBIC
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    aspect_ratio: str = "pad"

    def __post_init__(self) -> None:
        self.image_mean = tuple(float(x) for x in self.image_mean)  # type: ignore[assignment]
        self.image_std = tuple(float(x) for x in self.image_std)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """ConfigError (one line) for anything `preprocess` cannot honour."""
        if self.aspect_ratio not in ASPECT_RATIOS:
            raise ConfigError(f"image aspect_ratio {self.aspect_ratio!r} is not supported (expected pad or square)")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ConfigError("image_mean and image_std must have 3 values (RGB)")
        if not all(0.0 <= m <= 1.0 for m in self.image_mean):
            raise ConfigError(f"image_mean {list(self.image_mean)} must lie in [0, 1]")
        if not all(s > 0 for s in self.image_std):
            raise ConfigError(f"image_std {list(self.image_std)} must be positive")
        for name in ("shortest_edge", "crop_height", "crop_width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"image {name} must be a positive integer, got {v!r}")
        if self.resample not in RESAMPLE:
            raise ConfigError(f"image resample {self.resample!r} is not a PIL filter id (0-5)")
        if not self.rescale_factor > 0:
            raise ConfigError(f"image rescale_factor must be positive, got {self.rescale_factor!r}")

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """LLaVA's background: tuple(int(x * 255) for x in image_mean)."""
        return tuple(int(x * 255) for x in self.image_mean)  # type: ignore[return-value]

    @classmethod
    def from_preprocessor_config(cls, d: dict[str, Any], aspect_ratio: str = "pad") -> "ImagePreprocessConfig":
        """Read an HF CLIPImageProcessor preprocessor_config.json (new or legacy int sizes)."""
        kind = d.get("image_processor_type", d.get("feature_extractor_type", "CLIPImageProcessor"))
        if not str(kind).startswith("CLIP"):
            raise ConfigError(f"preprocessor_config image_processor_type {kind!r} is not supported "
                              "(expected CLIPImageProcessor)")
        size = d.get("size", 224)
        if isinstance(size, dict):
            if "shortest_edge" not in size:
                raise ConfigError(f"preprocessor_config size {size} is not supported (expected shortest_edge)")
            size = size["shortest_edge"]
        crop = d.get("crop_size", size)
        if isinstance(crop, dict):
            crop_h, crop_w = crop.get("height"), crop.get("width")
        else:
            crop_h = crop_w = crop
        kw: dict[str, Any] = dict(shortest_edge=size, crop_height=crop_h, crop_width=crop_w,
                                  aspect_ratio=aspect_ratio)
        for key in ("image_mean", "image_std", "resample", "rescale_factor", "do_resize",
                    "do_center_crop", "do_rescale", "do_normalize"):
            if key in d:
                kw[key] = d[key]
        try:
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"preprocessor_config is malformed: {exc}") from None

    def to_preprocessor_config(self) -> dict[str, Any]:
        """The HF preprocessor_config.json dict (aspect_ratio lives in the model config)."""
        return {
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_center_crop": self.do_center_crop,
            "do_convert_rgb": True,
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": "CLIPImageProcessor",
            "image_std": list(self.image_std),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": {"shortest_edge": self.shortest_edge},
        }


def clip_defaults(image_size: int, aspect_ratio: str = "pad") -> ImagePreprocessConfig:
    """OpenAI CLIP's processor for a square `image_size` input (e.g. 224 or 336)."""
    return ImagePreprocessConfig(shortest_edge=image_size, crop_height=image_size,
                                 crop_width=image_size, aspect_ratio=aspect_ratio)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _describe(source: ImageInput) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return "<PIL image>"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image file"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image is too large (more than {MAX_PIXELS // 1_000_000} megapixels)"
    text = str(exc).strip()
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return "file is truncated"
    text = text.splitlines()[0] if text else type(exc).__name__
    return text[:200]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB. 16-bit greys are scaled to 8 bits (PIL's convert would clip at 255)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or (img.mode == "I" and img.getextrema()[1] > 255):
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8))
    if img.mode == "La":  # premultiplied alpha: PIL converts it to LA only
        img = img.convert("LA")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning; alpha dropped next
    return img.convert("RGB")


def load_image(source: ImageInput) -> Image.Image:
    """A path, encoded bytes or a PIL image -> a new, fully decoded RGB PIL image: EXIF
    orientation applied, first frame of an animation. Any failure raises ImageError (one line)."""
    name = _describe(source)
    opened: Image.Image | None = None
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            with warnings.catch_warnings():  # sizes PIL only warns about are refused below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else Path(source)
                img = opened = Image.open(fp)
        w, h = img.size  # from the header: nothing is decoded yet
        if w * h > MAX_PIXELS:
            raise ImageError(f"cannot read image {name}: {w}x{h} is {w * h / 1e6:.1f} megapixels, "
                             f"more than the {MAX_PIXELS // 1_000_000} allowed")
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()  # decodes now, so a truncated file fails here
        img = ImageOps.exif_transpose(img)  # a copy: detached from the file
        img = _to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageError(f"cannot read image {name}: {_reason(exc)}") from None
    finally:
        if opened is not None:
            opened.close()
    if img.width == 0 or img.height == 0:
        raise ImageError(f"cannot read image {name}: image is empty ({img.width}x{img.height})")
    return img


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------
def expand_to_square(img: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """LLaVA's expand2square: center `img` on a max(w, h) square canvas filled with `color`."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), color)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def resize_shortest_edge(img: Image.Image, shortest_edge: int, resample: int = 3) -> Image.Image:
    """Shortest edge -> `shortest_edge`, long edge -> int(shortest_edge * long / short)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(shortest_edge * long / short)
    size = (shortest_edge, new_long) if w <= h else (new_long, shortest_edge)
    return img.resize(size, resample=Image.Resampling(resample))


def center_crop(x: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """[H, W, C] -> [crop_height, crop_width, C]; zero-pads first when the image is smaller
    (transformers.image_transforms.center_crop)."""
    h, w = x.shape[:2]
    top, left = (h - crop_height) // 2, (w - crop_width) // 2
    if top >= 0 and left >= 0:
        return x[top:top + crop_height, left:left + crop_width]
    nh, nw = max(crop_height, h), max(crop_width, w)
    padded = np.zeros((nh, nw) + x.shape[2:], dtype=x.dtype)
    tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    padded[tp:tp + h, lp:lp + w] = x
    top, left = top + tp, left + lp
    return padded[max(0, top):min(nh, top + crop_height), max(0, left):min(nw, left + crop_width)]


def preprocess(image: ImageInput, cfg: ImagePreprocessConfig) -> np.ndarray:
    """Image (anything load_image takes) -> pixel_values float32 [3, H, W]; H, W = the crop size
    when resize and center crop are on."""
    img = load_image(image)  # idempotent on its own output (the EXIF orientation is consumed)
    if cfg.aspect_ratio == "pad":
        img = expand_to_square(img, cfg.pad_color)
    if cfg.do_resize:
        img = resize_shortest_edge(img, cfg.shortest_edge, cfg.resample)
    x = np.asarray(img)  # [H, W, 3] uint8
    if cfg.do_center_crop:
        x = center_crop(x, cfg.crop_height, cfg.crop_width)
    if cfg.do_rescale:
        x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    x = x.astype(np.float32, copy=False)
    if cfg.do_normalize:
        mean = np.asarray(cfg.image_mean, dtype=np.float32)
        std = np.asarray(cfg.image_std, dtype=np.float32)
        x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # [3, H, W]
