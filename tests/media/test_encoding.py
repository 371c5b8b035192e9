"""The output format: sizes parsed and checked once, encoder parameters fixed per format."""

from __future__ import annotations

import pytest

from mvpipe.errors import InvalidInput
from mvpipe.frame_size import parse_size
from mvpipe.media.encoding import OutputFormat, encoder_options


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1280x720", (1280, 720)), (" 1920X1080 ", (1920, 1080)), ("160x90", (160, 90))],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "1280", "1280x", "x720", "1281x720", "1280x721", "8x8", "99999x720", "-1x2", "1e3x2"],
)
def test_bad_sizes_are_invalid_input(text):
    with pytest.raises(InvalidInput):
        parse_size(text)


@pytest.mark.parametrize(
    "args",
    [
        (1280, 720, 0),
        (1280, 720, 121),
        (1280, 720, 23.976),
        (1279, 720, 24),
        (True, 720, 24),
        (4096, 3072, 24),
    ],
)
def test_bad_formats_are_invalid_input(args):
    with pytest.raises(InvalidInput):
        OutputFormat(*args)


def test_encoder_parameters_are_fixed_per_format():
    fmt = OutputFormat(1280, 720, 24)
    options = encoder_options(fmt)
    assert options == encoder_options(OutputFormat(1280, 720, 24))
    assert "bframes=0" in options["x264-params"]
    assert "keyint=48:min-keyint=48:scenecut=0" in options["x264-params"]
    assert fmt.as_key() != OutputFormat(1280, 720, 25).as_key()
    assert fmt.as_key() != OutputFormat(1920, 1080, 24).as_key()
