"""Size limits that several stages must agree on, written once [ours].

MAX_PIXELS: an image whose header declares more pixels is not decoded anywhere (scan: status `too_large`;
report thumbnails: no thumbnail). It is Pillow's own decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`,
89,478,485 = 2**32 / 4 / 3 pixels: a 1 GB RGB buffer / 3), so nothing Pillow would open by default is refused,
and a scan's `--max-pixels` lowers or raises it per run.
"""

from __future__ import annotations

MAX_PIXELS = 89_478_485
