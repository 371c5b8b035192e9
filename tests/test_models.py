"""Input validation: typed errors, limits, ids that can never reach an S3 key unchecked."""

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mvpipe.errors import InvalidInput
from mvpipe.models import (
    MAX_SCENES,
    ProjectSpec,
    SceneSpec,
    parse_scene_specs,
    validate_project_id,
    validate_sequence,
)
from mvpipe.providers.faults import FaultPlan
from mvpipe.store.clips import clip_key, operation_key


def test_project_ids_must_be_canonical_uuid4() -> None:
    good = str(uuid.uuid4())
    assert validate_project_id(good) == good
    for bad in ["", "x", good.upper(), str(uuid.uuid1()), "../" + good[3:], None, 7, good + "\n"]:
        with pytest.raises(InvalidInput):
            validate_project_id(bad)


@given(st.text(max_size=80))
def test_arbitrary_text_is_never_a_valid_id_unless_uuid4(text: str) -> None:
    try:
        validate_project_id(text)
    except InvalidInput:
        return
    assert uuid.UUID(text).version == 4


@given(st.uuids(version=4))
def test_a_uuid4_is_accepted_only_in_its_canonical_form(value: uuid.UUID) -> None:
    # arbitrary text is practically never shaped like a UUID: the forms `uuid.UUID` reads
    # too (hex, braces, urn, upper case) are each refused, the canonical one kept as given
    canonical = str(value)
    assert validate_project_id(canonical) == canonical
    others = {
        value.hex,
        "{" + canonical + "}",
        value.urn,
        canonical.upper(),
        "{" + canonical.upper() + "}",
        value.hex.upper(),
        " " + canonical,
    }
    for form in others:
        assert uuid.UUID(form.strip()) == value  # each names the same id
        with pytest.raises(InvalidInput):
            validate_project_id(form)


def test_sequences() -> None:
    assert validate_sequence(1) == 1 and validate_sequence(999) == 999
    for bad in [0, 1000, -1, True, "3", 2.0]:
        with pytest.raises(InvalidInput):
            validate_sequence(bad)


def test_scene_specs_reject_control_characters_and_oversize() -> None:
    assert parse_scene_specs([{"prompt": "a\tb\nc"}])[0].prompt == "a\tb\nc"
    for bad in [
        {"prompt": ""},
        {"prompt": "x\x00"},
        {"prompt": "x" * 2001},
        {"prompt": "ok", "x": 1},
    ]:
        with pytest.raises(InvalidInput):
            parse_scene_specs([bad])
    with pytest.raises(InvalidInput):
        parse_scene_specs([{"prompt": "ok", "duration_seconds": 0}])


@pytest.mark.parametrize(
    "mark", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
             "\u2069", "\u200e", "\u200f", "\u061c"]
)  # fmt: skip
def test_text_with_a_bidi_control_is_refused(mark: str) -> None:
    # A bidi control reorders what a terminal shows after it ("Trojan Source"): a title or a
    # prompt holding one would show `status` and the logs other than what they say.
    with pytest.raises(InvalidInput, match="bidi controls"):
        parse_scene_specs([{"prompt": f"a scene {mark}txt.exe"}])
    with pytest.raises(ValidationError, match="bidi controls"):
        ProjectSpec(title=f"t{mark}", concept="c", provider="local")
    with pytest.raises(ValidationError, match="bidi controls"):
        ProjectSpec(title="t", concept=f"c{mark}", provider="local")


class _Counted(dict):  # type: ignore[type-arg]
    """A scene item that counts how often validation reads it."""

    reads = 0

    def items(self):  # type: ignore[no-untyped-def]
        _Counted.reads += 1
        return super().items()


@pytest.mark.parametrize("count", [MAX_SCENES + 1, 1_000_000])
def test_too_many_scenes_are_refused_before_any_is_validated(count: int) -> None:
    bad = {"prompt": ""}  # each item alone would be refused, with its own message
    for scenes in ([bad] * count, (bad,) * count):
        with pytest.raises(InvalidInput, match=f"at most {MAX_SCENES} scenes") as refused:
            parse_scene_specs(scenes)  # type: ignore[arg-type]
        assert "prompt" not in str(refused.value)  # no item was looked at
    _Counted.reads = 0
    with pytest.raises(InvalidInput, match=f"at most {MAX_SCENES} scenes"):
        parse_scene_specs([_Counted(prompt="ok") for _ in range(MAX_SCENES + 1)])
    assert _Counted.reads == 0


def test_scene_specs_up_to_the_limit_are_all_validated() -> None:
    assert len(parse_scene_specs([{"prompt": "ok"}] * MAX_SCENES)) == MAX_SCENES
    with pytest.raises(InvalidInput, match="prompt"):
        parse_scene_specs([{"prompt": "ok"}] * (MAX_SCENES - 1) + [{"prompt": ""}])


def test_clip_keys_are_built_from_validated_ids_only() -> None:
    pid = str(uuid.uuid4())
    key = clip_key(pid, 7, "projects/x/operations/../../etc")
    assert key.startswith(f"projects/{pid}/scenes/007/") and key.endswith(".mp4")
    assert ".." not in key and len(operation_key("a")) == 32
    with pytest.raises(InvalidInput):
        clip_key("../../etc", 1, "op")


def test_fault_plan_is_a_pure_function_of_its_inputs() -> None:
    plan = FaultPlan.parse("transient=0.3,permanent=0.1,seed=7")
    first = [plan.transient_fault("p", 1, "submit", n) for n in range(200)]
    assert first == [plan.transient_fault("p", 1, "submit", n) for n in range(200)]
    assert 30 < sum(first) < 90  # about 0.3 of 200
    assert SceneSpec(prompt="x").duration_seconds is None  # the provider's default
