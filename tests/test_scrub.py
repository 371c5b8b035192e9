"""Every secret we know is scrubbed from an error's text before it reaches `lastError`, a log
line or a task result: the providers' keys, the AWS credentials, Flower's password, and the
passwords inside the broker / Redis / result-backend URLs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvpipe.errors import TransientProviderError
from mvpipe.providers.classify import describe, scrub

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
    ],
)
def test_a_password_in_any_url_is_scrubbed_even_when_not_configured(
    url: str, scrubbed: str
) -> None:
    text = describe(OSError(f"cannot reach {url}, giving up"))
    assert scrubbed in text, text
    assert "hunter2" not in text and "p%40ss" not in text and ":pw@" not in text


#: What a URL's password may hold unencoded: printable ASCII but the "@" and "/" that end it.
passwords = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="@/"),
    min_size=1,
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
