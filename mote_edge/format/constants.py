"""Constants of the .mote v1 container (docs/FORMAT.md is the normative spec)."""

import struct

MAGIC = b"MOTE"
TRAILER_MAGIC = b"MOTE-END"
VERSION_MAJOR = 1
VERSION_MINOR = 2  # 1: the native vision section (format "native"); 2: lookahead predictors

# Header, 64 bytes, little-endian:
#   magic 4s | major u16 | minor u16 | flags u32 | header_crc32 u32 | metadata_offset u64 |
#   metadata_length u64 | data_offset u64 | file_size u64 | metadata_crc32 u32 | reserved 12x
HEADER = struct.Struct("<4sHHIIQQQQI12x")
HEADER_SIZE = HEADER.size  # 64
# Trailer, 24 bytes at the very end: magic 8s | file_size u64 | metadata_crc32 u32 | reserved 4x
TRAILER = struct.Struct("<8sQI4x")
TRAILER_SIZE = TRAILER.size  # 24

FLAG_HAS_VISION = 1 << 0
KNOWN_FLAGS = FLAG_HAS_VISION

TENSOR_ALIGN = 64  # every resident tensor and every part inside a tensor or record
SECTION_ALIGN = 4096  # data section, every expert record, the vision section

# The vision section's ONNX model: float32 pixels [batch, 3, S, S] in, image features [batch, P, H] out.
VISION_INPUT = "pixel_values"
VISION_OUTPUT = "image_features"

assert HEADER_SIZE == 64 and TRAILER_SIZE == 24
