"""Files nobody here made (a user's song, a provider's clip): what they claim must neither crash
nor exhaust a worker.

Tags are text in whatever encoding their writer chose (a WAV's LIST/INFO title is often
Latin-1), and PyAV decodes every tag as strict UTF-8 when it opens a file: one odd byte in a
title raised a UnicodeDecodeError for a file that plays fine. Nothing here reads tags, so
undecodable bytes are replaced instead.

A frame's size is what the header says it is: a 16k x 16k frame is 384 MB decoded (more once
scaled), enough to kill a media worker, and a killed task is delivered again (acks_late) to
kill the next one. So a video stream's declared size is checked before a frame is decoded, and
the decoder is told the same limit (a stream may change its size midway).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import av
from av.container import InputContainer

from mvpipe.errors import InvalidInput
from mvpipe.frame_size import MAX_FRAME_PIXELS

#: How undecodable tag bytes are read (`str.decode`'s errors): replaced, never refused.
METADATA_ERRORS = "replace"
#: The longest side a frame may have (H.264's own ceiling): longer is a crafted header.
MAX_FRAME_SIDE = 8192


def open_untrusted(source: str | Path | IO[bytes]) -> InputContainer:
    """Open `source` for reading with tags decoded leniently; FFmpeg's errors pass through."""
    opened = str(source) if isinstance(source, Path) else source
    return av.open(opened, mode="r", metadata_errors=METADATA_ERRORS)


def decoder(stream: Any, what: str) -> Any:
    """`stream`'s codec context; `InvalidInput` when FFmpeg has no decoder for its codec (an
    unknown WAV format tag, a codec this build leaves out): PyAV then gives None."""
    context = stream.codec_context
    if context is None:
        raise InvalidInput(f"{what} cannot be decoded: no decoder for its {stream.type} codec")
    return context


def check_frame_size(
    stream: Any, what: str, *, max_pixels: int = MAX_FRAME_PIXELS, max_side: int = MAX_FRAME_SIDE
) -> None:
    """Refuse a video stream whose declared frames are too large (`InvalidInput`: permanent,
    no retry decodes a smaller frame), before decoding any; then limit its decoder the same."""
    context = decoder(stream, what)
    width, height = context.width or 0, context.height or 0
    if width > max_side or height > max_side or width * height > max_pixels:
        raise InvalidInput(
            f"{what}'s frames are too large: {width}x{height}, at most {max_pixels:,} pixels "
            f"and {max_side:,} a side"
        )
    # FFmpeg's decoders refuse any frame past this (a size changed midway, an unknown header).
    context.options = {
        **context.options,
        "max_pixels": str(max_pixels),
    }
