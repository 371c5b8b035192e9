"""Every secret we know is scrubbed from an error's text before it reaches `lastError`, a log
line or a task result: the providers' keys, the AWS credentials, Flower's password, and the
passwords inside the broker / Redis / result-backend URLs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvpipe.errors import TransientProviderError
from mvpipe.models import CONTROL
from mvpipe.providers.classify import describe, from_status, scrub

SECRET = "not-a-real-secret-0123456789"


@pytest.mark.parametrize(
    "variable",
    [
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "REPLICATE_API_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MVPIPE_FLOWER_PASSWORD",
    ],
)
def test_a_secret_variable_is_scrubbed(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, SECRET)
    message = f"request failed: credential {SECRET} was refused"
    for text in (
        scrub(message),
        describe(RuntimeError(message)),
        describe(TransientProviderError(message)),
    ):
        assert SECRET not in text and "***" in text, text


@pytest.mark.parametrize(
    "variable", ["MVPIPE_BROKER_URL", "MVPIPE_RESULT_BACKEND", "MVPIPE_REDIS_URL"]
)
@pytest.mark.parametrize(
    "url",
    [
        "redis://:{pw}@redis.internal:6379/0",
        "redis://mvpipe:{pw}@redis.internal:6379/0",
        "rediss://default:{pw}@redis.internal:6380/1?ssl_cert_reqs=required",
    ],
)
def test_a_password_in_a_configured_url_is_scrubbed_wherever_it_appears(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    monkeypatch.setenv(variable, url.format(pw=SECRET))
    # echoed bare (an AUTH error, a repr of connection arguments) and inside the URL
    message = f"Error connecting: password={SECRET!r} to {url.format(pw=SECRET)}"
    for text in (scrub(message), describe(ConnectionError(message))):
        assert SECRET not in text, text
        assert "redis.internal" in text  # the rest is kept: it says where the error was


@pytest.mark.parametrize(
    ("url", "scrubbed"),
    [
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:hunter2@h", "redis://user:***@h"),
        ("rediss://user:p%40ss@h:6380/1", "rediss://user:***@h:6380/1"),
        ("sentinel://:pw@h1:26379;sentinel://:pw@h2:26379", "sentinel://:***@h1:26379;"),
        ("redis://h:6379/0", "redis://h:6379/0"),  # nothing to hide
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
        # an unencoded "@" or "/": hidden up to the last "@" before the host
        ("redis://:p@ss/hunter2@h:6379/0", "redis://:***@h:6379/0"),
    ],
)
def test_a_password_in_any_url_is_scrubbed_even_when_not_configured(
    url: str, scrubbed: str
) -> None:
    text = describe(OSError(f"cannot reach {url}, giving up"))
    assert scrubbed in text, text
    assert "hunter2" not in text and "p%40ss" not in text and ":pw@" not in text


#: What a URL's password may hold unencoded: printable ASCII, "@" and "/" included (only a
#: "://" would read as the start of another URL).
passwords = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1).filter(
    lambda p: "://" not in p
)


@given(
    user=st.sampled_from(["", "mvpipe", "default"]),
    password=passwords,
    before=st.text(max_size=20),
)
def test_property_url_passwords_never_survive(user: str, password: str, before: str) -> None:
    url = f"redis://{user}:{password}@cache.internal:6379/2"
    text = scrub(f"{before} {url} (retrying)")
    assert f"redis://{user}:***@cache.internal:6379/2" in text


@pytest.mark.parametrize(
    ("variable", "url", "bare"),
    [
        # redis-py reports the percent-decoded password
        ("MVPIPE_BROKER_URL", "redis://:p%40ss%2Fw0rd-1@h:6379/0", "p@ss/w0rd-1"),
        ("MVPIPE_BROKER_URL", "redis://:p%40ss%2Fw0rd-1@h:6379/0", "p%40ss%2Fw0rd-1"),
        # an unencoded "/": urlsplit() finds no password in it at all
        ("MVPIPE_REDIS_URL", "redis://:ab/cd3f@h:6379/0", "ab/cd3f"),
        # pydantic-settings reads the variable under any case
        ("mvpipe_broker_url", "redis://:lower-case-pw@h:6379/0", "lower-case-pw"),
        ("Mvpipe_Result_Backend", "redis://:mixed-case-pw@h:6379/0", "mixed-case-pw"),
        ("mvpipe_flower_password", "flower-secret", "flower-secret"),
    ],
)
def test_a_configured_password_is_scrubbed_in_every_form_it_is_echoed(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str, bare: str
) -> None:
    monkeypatch.setenv(variable, url)
    text = describe(ConnectionError(f"AUTH failed: invalid password {bare!r} (retrying)"))
    assert bare not in text and "***" in text, text
    assert "AUTH failed" in text


@pytest.mark.parametrize(
    ("message", "secret", "kept"),
    [
        ("401 with headers {'Authorization': 'Bearer r8_AbC.d-e~f/g+h='}", "r8_AbC", "Bearer ***"),
        ("GET https://api.example/v1/x?key=AIzaSy-k3y&alt=json", "AIzaSy", "?key=***&alt=json"),
        ("GET https://api.example/v1/x?alt=json&api_key=k3y-v4lue", "k3y-v4lue", "&api_key=***"),
        ("GET https://a.example/cb?access_token=ya29.t0k3n", "ya29", "?access_token=***"),
        ("GET https://a.example/cb?x=1&Token=t0k3n-value", "t0k3n-value", "&Token=***"),
    ],
)
def test_bearer_tokens_and_query_keys_are_scrubbed(message: str, secret: str, kept: str) -> None:
    text = scrub(message)
    assert secret not in text and kept in text, text


#: A provider's reply that would drive a terminal: a title set by OSC, a screen cleared by CSI,
#: a backspace over what was shown, a carriage return, C1's CSI and a line separator.
ESCAPES = "a\x1b]0;pwned\x07b \x1b[2J c\x08d\r e\x9b2Jf\u2028g"


def test_control_characters_of_a_reply_never_reach_last_error_or_a_log() -> None:
    assert scrub(ESCAPES) == "a?]0;pwned?b ?[2J c?d? e?2Jf?g"
    for text in (
        describe(RuntimeError(ESCAPES)),
        describe(TransientProviderError(ESCAPES)),
        from_status("replicate", 422, ESCAPES).args[0],
    ):
        assert not CONTROL.search(text) and "pwned" in text, repr(text)
    # a traceback keeps its lines; an error's text (`lastError`, a log line) is one line
    assert scrub("one\n\ttwo") == "one\n\ttwo"
    assert describe(ValueError("one\ntwo")) == "ValueError: one two"


#: Unicode's bidi controls (embeddings, overrides, isolates, marks): each reorders what a terminal
#: shows after it, so a reply could show a log line or an error other than the one written.
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_bidi_controls_of_a_reply_never_reach_last_error_or_a_log() -> None:
    reply = "clip \u202eexe.4pm\u202c ok " + BIDI
    shown = "clip ?exe.4pm? ok " + "?" * len(BIDI)
    assert scrub(reply) == shown
    assert describe(TransientProviderError(reply)) == shown
    assert from_status("replicate", 422, reply).args[0] == f"replicate: 422 {shown}"
    assert not any(ch in describe(RuntimeError(reply)) for ch in BIDI)


@given(st.text())
def test_property_no_control_character_survives(text: str) -> None:
    for scrubbed in (scrub(text), describe(RuntimeError(text))):
        assert not CONTROL.search(scrubbed), repr(scrubbed)
    assert "\n" not in describe(RuntimeError(text))


#: Text with no control character and nothing a secret's pattern takes (no "=", "@", bearer).
ordinary = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cs"), blacklist_characters=f"\u2028\u2029{BIDI}=@"
    )
    | st.sampled_from("\n\t")
).filter(lambda t: "bearer" not in t.lower())


@given(ordinary)
def test_property_ordinary_text_passes_unchanged(text: str) -> None:
    assert scrub(text) == text
    assert describe(TransientProviderError(text)) == text.replace("\n", " ")
