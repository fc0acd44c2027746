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


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG: the types of sizes and offsets


def _tiff(data: bytes) -> ImageInfo:
    """Baseline TIFF: the first image file directory's width (256), length (257) and the
    strips or tiles (offsets 273/324, byte counts 279/325), which must lie in the file."""
    e = "<" if data[:2] == b"II" else ">"
    n = len(data)
    if n < 8:
        return ImageInfo("tiff", None, "truncated: no TIFF header")
    (ifd,) = struct.unpack(e + "I", data[4:8])
    if ifd + 2 > n:
        return ImageInfo("tiff", None, "truncated: the TIFF ends before its first directory")
    (count,) = struct.unpack(e + "H", data[ifd:ifd + 2])
    if ifd + 2 + 12 * count > n:
        return ImageInfo("tiff", None, "truncated: the TIFF ends inside its first directory")
    tags = {}
    for j in range(count):
        o = ifd + 2 + 12 * j
        tag, typ, cnt = struct.unpack(e + "HHI", data[o:o + 8])
        if typ not in _TIFF_TYPES or cnt == 0:
            continue
        fmt, size = _TIFF_TYPES[typ]
        at = o + 8 if cnt * size <= 4 else struct.unpack(e + "I", data[o + 8:o + 12])[0]
        if at + cnt * size > n:
            return ImageInfo("tiff", None, "truncated: the TIFF ends inside a tag's values")
        tags[tag] = struct.unpack(f"{e}{cnt}{fmt}", data[at:at + cnt * size])
    if 256 not in tags or 257 not in tags:
        return ImageInfo("tiff", None, "corrupt: no image size in the TIFF directory")
    size = (tags[256][0], tags[257][0])
    for offsets, counts in ((273, 279), (324, 325)):
        if offsets in tags and counts in tags:
            if max(o + c for o, c in zip(tags[offsets], tags[counts])) > n:
                return ImageInfo("tiff", size, "truncated: shorter than its TIFF directory "
                                               "says")
            return ImageInfo("tiff", size, None)
    return ImageInfo("tiff", size, "corrupt: no image data in the TIFF directory")


def _pnm(data: bytes) -> ImageInfo:
    """Netpbm P1..P6: whitespace-separated width, height (and maxval but for P1/P4) after the
    magic, '#' comments allowed, one whitespace byte, then the raster (binary for P4..P6)."""
    kind = data[1:2]
    fields, i, n = [], 2, len(data)
    want = 2 if kind in b"14" else 3
    while len(fields) < want:
        while i < n and data[i:i + 1] in b" \t\r\n":
            i += 1
        if i < n and data[i:i + 1] == b"#":
            j = data.find(b"\n", i)
            i = n if j < 0 else j + 1
            continue
        j = i
        while j < n and data[j:j + 1].isdigit():
            j += 1
        if j == i:
            return ImageInfo("pnm", None, "corrupt: no size in its PNM header"
                             if j < n else "truncated: the PNM ends inside its header")
        fields.append(int(data[i:j]))
        i = j
    w, h = fields[0], fields[1]
    if kind in b"456":
        depth = 2 if want == 3 and fields[2] > 255 else 1
        per_row = (w + 7) // 8 if kind == b"4" else w * depth * (3 if kind == b"6" else 1)
        if n < i + 1 + per_row * h:
            return ImageInfo("pnm", (w, h), "truncated: shorter than its PNM header says")
    return ImageInfo("pnm", (w, h), None)


def _j2k_codestream(data: bytes, at: int) -> ImageInfo:
    """A JPEG 2000 codestream at ``at``: the SIZ segment follows SOC; it ends with EOC."""
    if len(data) < at + 24 or data[at + 2:at + 4] != b"\xff\x51":
        return ImageInfo("jpeg2000", None, "truncated: no JPEG 2000 size segment")
    xs, ys, x0, y0 = struct.unpack(">IIII", data[at + 8:at + 24])
    size = (xs - x0, ys - y0)
    if data.rfind(b"\xff\xd9", at + 24) < 0:
        return ImageInfo("jpeg2000", size, "truncated: no JPEG 2000 end marker")
    return ImageInfo("jpeg2000", size, None)


def _jp2(data: bytes) -> ImageInfo:
    """A JP2 file: boxes (length, type); the codestream is in 'jp2c', the size in the
    codestream's SIZ (the 'ihdr' box says the same)."""
    i, n = 0, len(data)
    while i + 8 <= n:
        (length,) = struct.unpack(">I", data[i:i + 4])
        kind, head = data[i + 4:i + 8], 8
        if length == 1:
            if i + 16 > n:
                break
            (length,) = struct.unpack(">Q", data[i + 8:i + 16])
            head = 16
        elif length == 0:
            length = n - i
        if length < head:
            return ImageInfo("jpeg2000", None, "corrupt: a JP2 box of impossible length")
        if kind == b"jp2c":
            info = _j2k_codestream(data, i + head)
            if i + length > n and info.problem is None:
                return info._replace(problem="truncated: shorter than its JP2 boxes say")
            return info
        i += length
    return ImageInfo("jpeg2000", None, "truncated: no JPEG 2000 codestream")


def inspect(data) -> ImageInfo:
    """The :class:`ImageInfo` of a file's bytes (``bytes`` or a uint8 array). Every format
    DALI decodes has its size read from its header; a header without one is a problem."""
    info = _inspect(bytes(data))
    if info.kind is not None and info.problem is None and (
            info.size is None or min(info.size) <= 0):
        return info._replace(problem=f"corrupt: no image size in its {info.kind} header")
    return info


def _inspect(data: bytes) -> ImageInfo:
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
        return _tiff(data)
    if data[:4] == b"\xff\x4f\xff\x51":
        return _j2k_codestream(data, 0)
    if data[4:8] == b"jP  ":
        return _jp2(data)
    if data[:1] == b"P" and data[1:2] in b"123456" and len(data) > 2:
        return _pnm(data)
    return ImageInfo(None, None, None)


HEADER_BYTES = (1 << 12, 1 << 16)  # most headers fit the first; EXIF thumbnails, the second


def read_size(path: str) -> Optional[tuple]:
    """(w, h) of an image file from its header (the first 4 KiB, else 64 KiB, else the whole
    file), None where it says none: cheap enough to run on every image of an index at load."""
    with open(path, "rb") as f:
        head = b""
        for n in HEADER_BYTES + (None,):
            more = f.read() if n is None else f.read(n - len(head))
            head += more
            info = _inspect(head)
            if info.size is not None or (n is not None and len(head) < n) or not more:
                break
    return info.size if info.size is not None and min(info.size) > 0 else None
