"""Text and image front-end: tokenizer, chat template, image loading and preprocessing."""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from PIL import Image

from mote_edge.chat import DEFAULT_SYSTEM, encode_prompt, format_prompt
from mote_edge.config import IMAGE_TOKEN_INDEX
from mote_edge.errors import ConfigError, ImageError, MoteError, TokenizerError
from mote_edge.image import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePreprocessConfig, clip_defaults,
                             load_image, preprocess)
from mote_edge.tokenizer import IncrementalDecoder, Tokenizer

ASSET = Path(__file__).resolve().parent.parent / "mote_edge" / "assets" / "tokenizer.json"
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
          "gives helpful, detailed, and polite answers to the user's questions.")
TEXTS = ["Hello, world!", "How many squares are there?", "héllo 猫 🐱", "",
         "  two  spaces\n\ttab\r\n", "emoji 👩‍👩‍👧 flag 🇫🇷 combining é", "\x00\x7f\u00ff\uffff\U0010ffff",
         "<|endoftext|> is plain text here", "<image> too"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


@pytest.fixture(scope="module")
def bos_tok() -> Tokenizer:
    """The shipped tokenizer plus a special "<s>" BOS and a post-processor that would add it."""
    raw = tokenizers.Tokenizer.from_file(str(ASSET))
    raw.add_special_tokens(["<s>"])
    bos = raw.token_to_id("<s>")
    raw.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return Tokenizer(raw, bos_token_id=bos)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
def test_asset_shape(tok: Tokenizer) -> None:
    assert ASSET.stat().st_size < 1_000_000
    assert tok.vocab_size <= 2048
    assert tok.eos_id == 0 and tok.token_to_id("<|endoftext|>") == 0
    assert tok.bos_id is None
    spec = json.loads(ASSET.read_text())
    assert spec["pre_tokenizer"]["type"] == "ByteLevel" and spec["decoder"]["type"] == "ByteLevel"
    assert spec["post_processor"] is None


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_round_trip_random_unicode(tok: Tokenizer) -> None:
    rng = random.Random(0)
    pools = [(0x20, 0x7E), (0xA0, 0x24F), (0x4E00, 0x4FFF), (0x1F300, 0x1F64F), (0x0, 0x1F)]
    for _ in range(200):
        text = "".join(chr(rng.randint(*rng.choice(pools))) for _ in range(rng.randint(0, 20)))
        assert tok.decode(tok.encode(text)) == text


def test_task_words_are_single_tokens(tok: Tokenizer) -> None:
    for word in [" circle", " red", " squares", " ASSISTANT", " assistant"]:
        assert len(tok.encode(word)) == 1, word
    assert tok.encode("") == []


def test_no_special_tokens_added_or_parsed(tok: Tokenizer) -> None:
    assert tok.encode("Hi")[0] != tok.eos_id
    assert 0 not in tok.encode("a <|endoftext|> b")


def test_decode_specials_and_bad_ids(tok: Tokenizer) -> None:
    ids = tok.encode("yes") + [tok.eos_id]
    assert tok.decode(ids) == "yes"
    assert tok.decode(ids, skip_special_tokens=False) == "yes<|endoftext|>"
    with pytest.raises(TokenizerError) as e:
        tok.decode([5, tok.vocab_size])
    assert str(tok.vocab_size) in one_line(e)
    with pytest.raises(TokenizerError):
        tok.decode([IMAGE_TOKEN_INDEX])


def test_from_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerError) as e:
        Tokenizer.from_file(missing)
    assert str(missing) in one_line(e)
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": {"type": "BPE", "vocab": ')
    with pytest.raises(TokenizerError) as e:
        Tokenizer.from_file(bad)
    assert str(bad) in one_line(e)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TokenizerError) as e:
        Tokenizer.from_file(bad)
    assert str(bad) in one_line(e)
    with pytest.raises(TokenizerError):
        Tokenizer.from_str("[]")


def test_from_file_and_ids(tmp_path: Path) -> None:
    t = Tokenizer.from_file(ASSET, bos_token_id=None, eos_token_id=5)
    assert t.eos_id == 5 and t.encode("red") == Tokenizer.default().encode("red")
    with pytest.raises(TokenizerError) as e:
        Tokenizer.from_file(ASSET, bos_token_id=10**6)
    assert "bos_token_id" in one_line(e)


@pytest.mark.parametrize("text", TEXTS + ["猫" * 7, "🐱🐶", "a\u0301"])
@pytest.mark.parametrize("skip", [True, False])
def test_incremental_decoder(tok: Tokenizer, text: str, skip: bool) -> None:
    ids = tok.encode(text) + [tok.eos_id] + tok.encode(" 🐱 end")
    dec = tok.incremental_decoder(skip_special_tokens=skip)
    pieces = [dec.feed(i) for i in ids]
    tail = dec.flush()
    assert "".join(pieces) + tail == tok.decode(ids, skip_special_tokens=skip)
    assert not any("\ufffd" in p for p in pieces if "\ufffd" not in text)
    assert tail == ""


def test_incremental_decoder_emoji_split_across_tokens(tok: Tokenizer) -> None:
    ids = tok.encode("héllo 猫 🐱")
    assert len(ids) > len("héllo 猫 🐱")  # multi-byte characters really are split
    dec = IncrementalDecoder(tok)
    pieces = [dec.feed(i) for i in ids]
    assert "".join(pieces) == "héllo 猫 🐱" and dec.flush() == ""
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # held back at least once


def test_incremental_decoder_dangling_bytes(tok: Tokenizer) -> None:
    ids = tok.encode("ok 🐱")[:-1]  # stop in the middle of the emoji
    dec = tok.incremental_decoder()
    pieces = [dec.feed(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + dec.flush() == tok.decode(ids)  # the U+FFFD shows up only at the end


def test_incremental_decoder_added_tokens() -> None:
    """Added tokens follow the Rust ByteLevel decoder's rule (alphabet chars, else raw UTF-8)."""
    raw = tokenizers.Tokenizer.from_file(str(ASSET))
    raw.add_tokens(["猫猫", "ĠĊx", " sp ace"])
    raw.add_special_tokens(["<|im_end|>"])
    t = Tokenizer(raw)
    ids = t.encode("a 猫猫 b") + [t.token_to_id(x) for x in ("ĠĊx", " sp ace", "<|im_end|>")] + [0, 5]
    for skip in (True, False):
        dec = t.incremental_decoder(skip)
        assert "".join(dec.feed(i) for i in ids) + dec.flush() == t.decode(ids, skip)


def test_incremental_decoder_fallback_path() -> None:
    """A decoder that is not plain ByteLevel takes the re-decode path; same text, same rules."""
    raw = tokenizers.Tokenizer.from_file(str(ASSET))
    raw.decoder = tokenizers.decoders.Sequence([tokenizers.decoders.ByteLevel()])
    t = Tokenizer(raw)
    assert t.token_bytes() is None
    for text in TEXTS:
        ids = t.encode(text)
        dec = t.incremental_decoder()
        pieces = [dec.feed(i) for i in ids]
        assert "".join(pieces) + dec.flush() == text
        assert all("\ufffd" not in p for p in pieces if "\ufffd" not in text)


# ---------------------------------------------------------------------------------------------
# Chat template
# ---------------------------------------------------------------------------------------------
def test_default_system() -> None:
    assert DEFAULT_SYSTEM == SYSTEM


def test_format_prompt() -> None:
    assert format_prompt("What color is the star?", True) == \
        SYSTEM + " USER: <image>\nWhat color is the star? ASSISTANT:"
    assert format_prompt("Hi", False) == SYSTEM + " USER: Hi ASSISTANT:"
    assert format_prompt("", False, system="S") == "S USER:  ASSISTANT:"


def test_encode_prompt_image_position(tok: Tokenizer) -> None:
    q = "How many squares are there?"
    ids = encode_prompt(tok, q, has_image=True)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    k = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[:k] == tok.encode(SYSTEM + " USER: ")
    assert ids[k + 1:] == tok.encode("\n" + q + " ASSISTANT:")
    assert tok.decode(ids[:k]) + "<image>" + tok.decode(ids[k + 1:]) == format_prompt(q, True)


def test_encode_prompt_without_image(tok: Tokenizer) -> None:
    ids = encode_prompt(tok, "Is there a red star?", has_image=False)
    assert IMAGE_TOKEN_INDEX not in ids
    assert ids == tok.encode(format_prompt("Is there a red star?", False))
    assert encode_prompt(tok, "", has_image=True).count(IMAGE_TOKEN_INDEX) == 1


@pytest.mark.parametrize("has_image", [True, False])
@pytest.mark.parametrize("question", ["What color is the circle?", "<s>What color is the circle?", "<s>", ""])
def test_encode_prompt_single_bos(bos_tok: Tokenizer, question: str, has_image: bool) -> None:
    assert bos_tok.bos_id is not None
    ids = encode_prompt(bos_tok, question, has_image=has_image)
    assert ids[0] == bos_tok.bos_id
    assert ids.count(bos_tok.bos_id) == 1
    assert ids.count(IMAGE_TOKEN_INDEX) == (1 if has_image else 0)
    if has_image:
        assert ids.index(IMAGE_TOKEN_INDEX) == 1 + len(bos_tok.encode(SYSTEM + " USER: "))


def test_encode_prompt_errors(tok: Tokenizer) -> None:
    with pytest.raises(TokenizerError) as e:
        encode_prompt(tok, "look: <image>", has_image=False)
    assert "<image>" in one_line(e)
    with pytest.raises(TokenizerError) as e:
        encode_prompt(tok, "another <image> here", has_image=True)
    assert "2" in one_line(e)
    with pytest.raises(MoteError) as e:  # a system prompt cannot hold the image placeholder
        encode_prompt(tok, "q", has_image=True, system="sys <image>")
    assert "<image>" in one_line(e)


# ---------------------------------------------------------------------------------------------
# Image preprocessing
# ---------------------------------------------------------------------------------------------
MEAN = np.array(OPENAI_CLIP_MEAN)
STD = np.array(OPENAI_CLIP_STD)
TOL = 1 / 255 / STD.min()  # one grey level after normalization


def gradient(w: int = 37, h: int = 23) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 7 % 256, y * 11 % 256, (x + y) * 5 % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def reference(img: Image.Image, edge: int, crop_h: int, crop_w: int, pad: bool) -> np.ndarray:
    """Straightforward re-implementation: numpy pad, PIL bicubic resize, numpy crop/normalize."""
    a = np.asarray(img)
    h, w = a.shape[:2]
    if pad and w != h:
        s = max(w, h)
        canvas = np.empty((s, s, 3), np.uint8)
        canvas[:] = [int(m * 255) for m in OPENAI_CLIP_MEAN]
        canvas[(s - h) // 2:(s - h) // 2 + h, (s - w) // 2:(s - w) // 2 + w] = a
        a = canvas
    h, w = a.shape[:2]
    if w <= h:
        size = (edge, int(edge * h / w))
    else:
        size = (int(edge * w / h), edge)
    a = np.asarray(Image.fromarray(a).resize(size, Image.BICUBIC))
    h, w = a.shape[:2]
    t, l = (h - crop_h) // 2, (w - crop_w) // 2
    a = a[t:t + crop_h, l:l + crop_w] / 255.0
    return ((a - MEAN) / STD).transpose(2, 0, 1)


def test_output_shape_dtype() -> None:
    x = preprocess(gradient(), clip_defaults(16))
    assert x.shape == (3, 16, 16) and x.dtype == np.float32 and x.flags.c_contiguous


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("edge,crop_h,crop_w", [(16, 16, 16), (20, 16, 12), (13, 9, 13)])
def test_matches_independent_reference(pad: bool, edge: int, crop_h: int, crop_w: int) -> None:
    cfg = ImagePreprocessConfig(shortest_edge=edge, crop_height=crop_h, crop_width=crop_w,
                                aspect_ratio="pad" if pad else "square")
    for img in (gradient(), gradient(23, 37), gradient(30, 30)):
        got = preprocess(img, cfg)
        assert got.shape == (3, crop_h, crop_w)
        np.testing.assert_allclose(got, reference(img, edge, crop_h, crop_w, pad), atol=1e-5)


def test_golden_values() -> None:
    """Hard-coded from the reference above (Pillow bicubic), so drift in either shows up."""
    x = preprocess(gradient(), clip_defaults(16))
    golden = {(0, 0, 0): -0.011254,  # padding: int(0.48145466 * 255) = 122, not 122.77
              (0, 8, 3): -1.018546, (1, 8, 8): 0.258944, (2, 10, 15): -0.299954,
              (0, 12, 12): 1.010635, (1, 3, 5): -1.496965}
    for idx, want in golden.items():
        assert x[idx] == pytest.approx(want, abs=1e-5), idx


def test_mean_colour_maps_to_zero() -> None:
    rgb = tuple(round(m * 255) for m in OPENAI_CLIP_MEAN)
    for size in [(50, 50), (64, 31)]:
        x = preprocess(Image.new("RGB", size, rgb), clip_defaults(24))
        assert np.abs(x).max() <= TOL


def test_wide_image_is_padded() -> None:
    x = preprocess(Image.new("RGB", (40, 20), (255, 0, 0)), clip_defaults(20))  # 10 rows pad each side -> 5
    assert x.shape == (3, 20, 20)
    for row in (0, 1, 2, 17, 18, 19):
        assert np.abs(x[:, row]).max() <= TOL, row
    red = (np.array([1.0, 0.0, 0.0]) - MEAN) / STD
    for row in range(7, 13):
        np.testing.assert_allclose(x[:, row], np.broadcast_to(red[:, None], (3, 20)), atol=1e-5)


def test_exif_orientation(tmp_path: Path) -> None:
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)  # left half red
    a[:, 20:] = (0, 0, 255)  # right half blue
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(a).save(path, exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40)  # portrait now
    b = np.asarray(img).astype(int)
    assert b[5, 10, 0] > 200 and b[5, 10, 2] < 60  # top is red (the old left edge)
    assert b[34, 10, 2] > 200 and b[34, 10, 0] < 60  # bottom is blue
    x = preprocess(path, clip_defaults(20))  # padded left/right, red top, blue bottom
    assert np.abs(x[:, :, 0]).max() <= TOL and np.abs(x[:, :, 19]).max() <= TOL
    assert x[0, 3, 10] > 1.5 and x[2, 3, 10] < -1.0
    assert x[2, 16, 10] > 1.5 and x[0, 16, 10] < -1.0


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA", "CMYK", "I;16", "1", "I", "F"])
def test_modes_convert_to_rgb(mode: str, tmp_path: Path) -> None:
    base = gradient(32, 24)
    if mode == "I;16":
        g = (np.asarray(base.convert("L")).astype(np.uint16) * 257)
        img = Image.fromarray(g)
        assert img.mode == "I;16"
    else:
        img = base.convert(mode)
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (32, 24)
    if mode in ("L", "I;16"):  # 16-bit grey is scaled back to 8 bits, not clipped at 255
        assert np.array_equal(np.asarray(out)[..., 0], np.asarray(base.convert("L")))
    x = preprocess(img, clip_defaults(16))
    assert x.shape == (3, 16, 16) and np.isfinite(x).all()
    if mode in ("RGBA", "P", "L", "CMYK", "I;16"):  # and from a file
        path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
        img.save(path)
        assert load_image(path).mode == "RGB"


def test_rgba_drops_alpha_like_llava() -> None:
    img = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(load_image(img))[0, 0].tolist() == [10, 20, 30]


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert np.asarray(load_image(path))[4, 4].tolist() == [255, 0, 0]


def test_load_from_bytes() -> None:
    buf = io.BytesIO()
    gradient().save(buf, "PNG")
    img = load_image(buf.getvalue())
    assert np.array_equal(np.asarray(img), np.asarray(gradient()))


def _png_with_size(w: int, h: int) -> bytes:
    """A 1x1 PNG whose header claims w x h (nothing that large is ever decoded)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    b[16:24] = struct.pack(">II", w, h)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


@pytest.mark.parametrize("w,h", [(9000, 8000), (30000, 30000)])
def test_refuses_huge_images(tmp_path: Path, w: int, h: int) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_with_size(w, h))
    with pytest.raises(ImageError) as e:
        load_image(path)
    msg = one_line(e)
    assert "huge.png" in msg and "megapixels" in msg


def test_bad_files(tmp_path: Path) -> None:
    rnd = tmp_path / "cat.jpg"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError) as e:
        load_image(rnd)
    assert one_line(e) == f"cannot read image {rnd}: not an image file"

    missing = tmp_path / "missing.png"
    with pytest.raises(ImageError) as e:
        load_image(missing)
    assert one_line(e) == f"cannot read image {missing}: file not found"

    with pytest.raises(ImageError) as e:
        load_image(b"not an image")
    one_line(e)


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_files(tmp_path: Path, fmt: str, ext: str) -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"half.{ext}"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert one_line(e) == f"cannot read image {path}: file is truncated"
    with pytest.raises(ImageError):
        preprocess(path, clip_defaults(16))


# ---------------------------------------------------------------------------------------------
# preprocessor_config.json
# ---------------------------------------------------------------------------------------------
def test_clip_defaults() -> None:
    cfg = clip_defaults(336)
    assert cfg.image_mean == (0.48145466, 0.4578275, 0.40821073)
    assert cfg.image_std == (0.26862954, 0.26130258, 0.27577711)
    assert (cfg.shortest_edge, cfg.crop_height, cfg.crop_width, cfg.resample) == (336, 336, 336, 3)
    assert cfg.aspect_ratio == "pad" and cfg.pad_color == (122, 116, 104)


def test_preprocessor_config_round_trip() -> None:
    cfg = ImagePreprocessConfig(image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.5, 1.0), shortest_edge=40,
                                crop_height=32, crop_width=36, resample=2, do_center_crop=False,
                                aspect_ratio="square")
    d = json.loads(json.dumps(cfg.to_preprocessor_config()))
    assert d["image_processor_type"] == "CLIPImageProcessor"
    assert d["size"] == {"shortest_edge": 40} and d["crop_size"] == {"height": 32, "width": 36}
    assert ImagePreprocessConfig.from_preprocessor_config(d, aspect_ratio="square") == cfg
    assert ImagePreprocessConfig.from_preprocessor_config(clip_defaults(224).to_preprocessor_config()) \
        == clip_defaults(224)


def test_preprocessor_config_legacy_and_errors() -> None:
    legacy = {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
              "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(OPENAI_CLIP_MEAN),
              "image_std": list(OPENAI_CLIP_STD), "resample": 3, "size": 336}
    assert ImagePreprocessConfig.from_preprocessor_config(legacy) == clip_defaults(336)
    with pytest.raises(ConfigError):
        ImagePreprocessConfig.from_preprocessor_config({**legacy, "size": {"height": 3, "width": 3}})
    with pytest.raises(ConfigError):
        ImagePreprocessConfig.from_preprocessor_config({**legacy, "image_std": [0.1, 0.0, 0.2]})
    with pytest.raises(ConfigError):
        ImagePreprocessConfig.from_preprocessor_config(legacy, aspect_ratio="anyres")
