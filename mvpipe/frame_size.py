"""The rules of the output frame: its size and rate.

Pure (no PyAV), so settings check `MVPIPE_OUTPUT_SIZE` and `MVPIPE_OUTPUT_FPS` when they load,
and `mvpipe.media.encoding.OutputFormat` holds every cut to the same rules: one place for them.
"""

from __future__ import annotations

import re

from mvpipe.errors import InvalidInput

MAX_SIDE = 4096
#: The most pixels a decoded frame may have: 4K (DCI, or UHD either way up) with some room; no
#: provider makes larger clips. The output is held to it too: every cut and lip-sync output is
#: decoded again under this limit (`mvpipe.media.untrusted`), so a larger output format would
#: fail each one, a lip-sync after its job was paid.
MAX_FRAME_PIXELS = 4096 * 2304
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


def check_frame(width: object, height: object, fps: object) -> None:
    """`InvalidInput` unless the frame is one the encoder makes exactly."""
    for name, value in (("width", width), ("height", height)):
        if not _whole(value) or not 16 <= value <= MAX_SIDE:  # type: ignore[operator]
            raise InvalidInput(f"output {name} must be a whole number 16..{MAX_SIDE}")
        # yuv420p stores colour at half resolution: odd sizes cannot be encoded exactly.
        if value % 2:  # type: ignore[operator]
            raise InvalidInput(f"output {name} must be even for yuv420p, got {value}")
    if width * height > MAX_FRAME_PIXELS:  # type: ignore[operator]
        raise InvalidInput(
            f"output frame {width}x{height} has more pixels than 4096x2304"
            f" ({MAX_FRAME_PIXELS:,}), the most a frame is decoded at"
        )
    if not _whole(fps) or not 1 <= fps <= 120:  # type: ignore[operator]
        raise InvalidInput(f"output fps must be a whole number 1..120, got {fps!r}")


def parse_size(text: str) -> tuple[int, int]:
    """`"1280x720"` → (1280, 720); anything else (odd, tiny, huge, malformed) → InvalidInput."""
    match = _SIZE.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(f"output size must look like 1280x720, got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    check_frame(width, height, 24)
    return width, height


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
