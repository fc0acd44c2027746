"""What an image file is, from its bytes: its format, its stored size and whether it is whole.

The loader checks every file it reads (:func:`inspect`, a few microseconds: headers and one
search for the JPEG end marker) so that a truncated, empty or foreign file, or one whose size
is not the annotations', is named before DALI sees it, instead of ending in an error about
"sample #3" of some batch.

Sizes are those of the *stored* pixels (width, height), as the annotations of COCO, MPII and
CrowdPose use them: an EXIF orientation tag is not applied (and dali_pose's decoders do not
apply it either).
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Optional

# JPEG frame headers (SOF0..SOF15 but DHT, JPG and DAC) carry the size.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageInfo(NamedTuple):
    """``kind``: 'jpeg', 'png', 'bmp', 'webp', 'tiff', 'jpeg2000', 'pnm' or None (not an image
    DALI decodes); ``size`` (w, h) where the header says it, else None; ``problem``: why the
    file is not whole (e.g. 'truncated: no JPEG end marker after the scan data'), else None."""

    kind: Optional[str]
    size: Optional[tuple]
    problem: Optional[str]


def _jpeg(data: bytes) -> ImageInfo:
    i, size, n = 2, None, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return ImageInfo("jpeg", size, f"corrupt: no JPEG marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD8 or marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            return ImageInfo("jpeg", size, "corrupt: the JPEG ends before any image data")
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in _SOF and i + 9 <= n:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            size = (w, h)
        if marker == 0xDA:  # start of scan: the entropy-coded data follows
            # 0xFF 0xD9 cannot occur inside scan data (0xFF is stuffed): the last one of
            # the file, after the first scan header, is the end of the image
            if data.rfind(b"\xff\xd9", i + 2 + length) < 0:
                return ImageInfo("jpeg", size, "truncated: no JPEG end marker after the "
                                               "image data")
            if size is None:
                return ImageInfo("jpeg", None, "corrupt: no JPEG frame header")
            return ImageInfo("jpeg", size, None)
        i += 2 + length
    return ImageInfo("jpeg", size, "truncated: the JPEG ends inside its headers")


def _png(data: bytes) -> ImageInfo:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return ImageInfo("png", None, "truncated: no PNG header")
    w, h = struct.unpack(">II", data[16:24])
    if data.rfind(b"IEND", max(0, len(data) - 12)) < 0:
        return ImageInfo("png", (w, h), "truncated: no PNG end chunk")
    return ImageInfo("png", (w, h), None)


def _bmp(data: bytes) -> ImageInfo:
    if len(data) < 26:
        return ImageInfo("bmp", None, "truncated: no BMP header")
    w, h = struct.unpack("<ii", data[18:26])
    (declared,) = struct.unpack("<I", data[2:6])
    problem = "truncated: shorter than its BMP header says" if len(data) < declared else None
    return ImageInfo("bmp", (w, abs(h)), problem)


def _webp(data: bytes) -> ImageInfo:
    (declared,) = struct.unpack("<I", data[4:8])
    problem = ("truncated: shorter than its RIFF header says"
               if len(data) < declared + 8 else None)
    chunk, size = data[12:16], None
    if chunk == b"VP8X" and len(data) >= 30:
        size = (1 + int.from_bytes(data[24:27], "little"),
                1 + int.from_bytes(data[27:30], "little"))
    elif chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        size = (w & 0x3FFF, h & 0x3FFF)
    elif chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        size = (1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
    return ImageInfo("webp", size, problem)


def inspect(data) -> ImageInfo:
    """The :class:`ImageInfo` of a file's bytes (``bytes`` or a uint8 array)."""
    data = bytes(data)
    if not data:
        return ImageInfo(None, None, "empty: the file has no bytes")
    if data[:2] == b"\xff\xd8":
        return _jpeg(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(data)
    if data[:2] == b"BM":
        return _bmp(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ImageInfo("tiff", None, None)
    if data[:4] == b"\xff\x4f\xff\x51" or data[4:8] == b"jP  ":
        return ImageInfo("jpeg2000", None, None)
    if data[:1] == b"P" and data[1:2] in b"123456" and len(data) > 2:
        return ImageInfo("pnm", None, None)
    return ImageInfo(None, None, None)
