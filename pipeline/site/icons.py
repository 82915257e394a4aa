"""The site's icon, drawn here: a white cross on a rounded square in the accent colour.

One drawing, two forms: ``SVG`` (the favicon browsers use) and ``png(width, height)``,
the same shapes rasterised in pure Python for the places that want a bitmap (RSS
``<image>`` must be GIF, JPEG or PNG; the JSON Feed ``icon``/``favicon``; Atom
``<icon>``/``<logo>``; Open Graph). Nothing is fetched from a third-party host, and the
bytes depend on this code only, so a rebuild writes the same files.
"""
from __future__ import annotations

import struct
import zlib
from functools import lru_cache

ACCENT = (0x0B, 0x5C, 0x8A)
# the drawing on a 64-unit square: corner radius, and the cross's arm length and thickness
UNITS, RADIUS, ARM, THICK = 64, 12, 36, 12

SVG = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {UNITS} {UNITS}" width="{UNITS}" height="{UNITS}">'
       f'<rect width="{UNITS}" height="{UNITS}" rx="{RADIUS}" fill="#0b5c8a"/>'
       f'<rect x="{(UNITS - THICK) // 2}" y="{(UNITS - ARM) // 2}" width="{THICK}" height="{ARM}" fill="#fff"/>'
       f'<rect x="{(UNITS - ARM) // 2}" y="{(UNITS - THICK) // 2}" width="{ARM}" height="{THICK}" fill="#fff"/>'
       '</svg>\n')

# file name -> (width, height); every page and feed refers to these names
FAVICON_SVG = "favicon.svg"
PNGS = {"icon-64.png": (64, 64), "icon-144.png": (144, 144), "icon-512.png": (512, 512), "logo.png": (288, 144)}
FILES = (FAVICON_SVG, *PNGS)
FAVICON_PNG, RSS_IMAGE, ICON, LOGO = "icon-64.png", "icon-144.png", "icon-512.png", "logo.png"


def _coverage(x: int, y: int, w: int, h: int, r: float) -> float:
    """How much of pixel (x, y) the rounded rectangle covers (0..1), antialiased at the corners."""
    cx = r if x < r else (w - r if x >= w - r else None)
    cy = r if y < r else (h - r if y >= h - r else None)
    if cx is None or cy is None:
        return 1.0
    distance = ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2) ** 0.5
    return min(max(r - distance + 0.5, 0.0), 1.0)


@lru_cache(maxsize=None)
def png(width: int, height: int) -> bytes:
    """The icon as an RGBA PNG of ``width`` x ``height`` pixels (the mark centred; a wider
    image is a wider rounded rectangle, for the 2:1 Atom logo)."""
    scale = min(width, height) / UNITS
    radius = RADIUS * scale
    arm, thick = round(ARM * scale), round(THICK * scale)
    v_left, v_top = (width - thick) // 2, (height - arm) // 2  # the upright bar
    h_left, h_top = (width - arm) // 2, (height - thick) // 2  # the crossbar
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        in_upright_rows = v_top <= y < v_top + arm
        in_crossbar_rows = h_top <= y < h_top + thick
        for x in range(width):
            alpha = _coverage(x, y, width, height, radius)
            white = (in_upright_rows and v_left <= x < v_left + thick) or \
                (in_crossbar_rows and h_left <= x < h_left + arm)
            rows += b"\xff\xff\xff" if white else bytes(ACCENT)
            rows.append(round(alpha * 255))
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(bytes(rows), 9)) \
        + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def file(name: str) -> bytes:
    """The bytes of one of ``FILES``."""
    return SVG.encode("utf-8") if name == FAVICON_SVG else png(*PNGS[name])
