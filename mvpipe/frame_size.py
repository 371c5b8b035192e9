"""The rules of the output frame: its size and rate.

Pure (no PyAV), so settings check `MVPIPE_OUTPUT_SIZE` and `MVPIPE_OUTPUT_FPS` when they load,
and `mvpipe.media.encoding.OutputFormat` holds every cut to the same rules: one place for them.
"""

from __future__ import annotations

import re

from mvpipe.errors import InvalidInput

MAX_SIDE = 4096
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


def check_frame(width: object, height: object, fps: object) -> None:
    """`InvalidInput` unless the frame is one the encoder makes exactly."""
    for name, value in (("width", width), ("height", height)):
        if not _whole(value) or not 16 <= value <= MAX_SIDE:  # type: ignore[operator]
            raise InvalidInput(f"output {name} must be a whole number 16..{MAX_SIDE}")
        # yuv420p stores colour at half resolution: odd sizes cannot be encoded exactly.
        if value % 2:  # type: ignore[operator]
            raise InvalidInput(f"output {name} must be even for yuv420p, got {value}")
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
