"""Scene stages are data: each `Stage` entry says all there is to say about its stage, and no
module outside `pipeline/stages.py` asks which stage it holds. Pure: no servers.

The first test checks the entries against each other (a paid stage has everything the paid
machine and reconcile read; a free one has a runner and nothing of a paid stage's). The second
walks every module's source for a comparison against a named stage (`stage is GENERATE`,
`stage.name == "lipsync"`, `stage in (CUT, LIPSYNC)`): such a branch would make a new stage need
edits outside its entry. It sees comparisons only; a lookup keyed by a stage is not caught.
"""

from __future__ import annotations

import ast
import dataclasses
import uuid
from pathlib import Path

import mvpipe
from mvpipe.devstack.failpoints import LIPSYNC_POINTS, POINTS
from mvpipe.pipeline import stages
from mvpipe.pipeline.stages import (
    BY_NAME,
    MEDIA_QUEUE,
    STAGES,
    VIDEO_QUEUE,
    Stage,
    claims_first_stage,
)
from mvpipe.store.clips import scene_prefix
from mvpipe.store.stage_fields import OUTPUT_ORDER
from tests.test_stages import scene

#: The moments of the paid machine a drill can crash at, each stage's named with its prefix.
MACHINE_POINTS = ("after_submit", "during_poll", "after_upload")


def test_every_stage_entry_is_complete_and_consistent_with_the_others() -> None:
    names = [stage.name for stage in STAGES]
    assert len(set(names)) == len(names) == 3
    assert dict(zip(names, STAGES, strict=True)) == BY_NAME
    # the outputs are the store's, in the order clearing one clears the later ones
    assert tuple(stage.fields for stage in STAGES) == OUTPUT_ORDER
    assert len({stage.fields.output for stage in STAGES}) == len(STAGES)
    paid = [stage for stage in STAGES if stage.paid]
    assert paid and len(paid) < len(STAGES)
    operations = [s.fields.operation for s in paid] + [s.fields.attempts for s in paid]
    assert len(set(operations)) == 2 * len(paid)
    for index, stage in enumerate(STAGES):
        assert stage.queue in (VIDEO_QUEUE, MEDIA_QUEUE)
        assert stage.later == STAGES[index + 1 :]  # what is_last and never_last read
        # a stage is made from an earlier stage's output
        earlier = {s.fields.output for s in STAGES[:index]}
        assert stage.requires is None or stage.requires in earlier, stage.name
        if stage.paid:
            assert_paid(stage)
        else:
            assert_free(stage)
    # each paid stage's crash points are its own, and the ones the drills arm by name
    prefixes = [stage.failpoints for stage in paid]
    assert len(set(prefixes)) == len(paid)
    armed = set(POINTS) | set(LIPSYNC_POINTS)
    for stage in paid:
        assert {f"{stage.failpoints}{point}" for point in MACHINE_POINTS} <= armed, stage.name
    # and the keys their operations' outputs go to never meet
    project_id = str(uuid.uuid4())
    keys = {stage.operation_output(project_id, 4, "op-1") for stage in paid}
    assert len(keys) == len(paid)


def assert_paid(stage: Stage) -> None:
    """What the paid machine, the cancel and reconcile's adoption read of a paid stage."""
    assert stage.fields.operation is not None and stage.fields.attempts is not None
    assert stage.price is not None, stage.name
    assert stage.provider is not None, stage.name
    assert stage.output_key is not None, stage.name
    assert stage.runner is None, stage.name
    # its output is stored under the scene's prefix: garbage collection reads only that
    project_id = str(uuid.uuid4())
    assert stage.operation_output(project_id, 4, "op-1").startswith(scene_prefix(project_id, 4))


def assert_free(stage: Stage) -> None:
    """A free stage has a runner and none of a paid stage's parts."""
    assert stage.fields.operation is None and stage.fields.attempts is None
    assert stage.runner is not None, stage.name
    assert (stage.price, stage.provider, stage.output_key, stage.input_key) == (None,) * 4
    assert stage.failpoints == "" and not stage.fits_duration


def test_only_a_scene_whose_first_stage_is_not_submitted_claims_a_slot_of_its_video_quota() -> None:
    # planning orders a run's waiters by the video provider's quota: only those scenes ask it
    fresh = scene()
    assert claims_first_stage(fresh)
    assert not claims_first_stage(dataclasses.replace(fresh, operation_id="op"))  # its job runs
    cut = dataclasses.replace(fresh, clip_key="o.mp4", operation_id="op")
    assert not claims_first_stage(cut)  # the cut is next: free work
    synced = dataclasses.replace(cut, working_clip_key="w.mp4", lip_sync=True)
    assert not claims_first_stage(synced)  # the lip-sync asks its own pool


#: The names the stage module binds to its stages (GENERATE, CUT, LIPSYNC), and the tables a
#: stage could be picked out of by position or name.
STAGE_CONSTANTS = frozenset(n for n, v in vars(stages).items() if isinstance(v, Stage))
STAGE_TABLES = frozenset({"STAGES", "BY_NAME"})
STAGE_NAMES = frozenset(stage.name for stage in STAGES)


def _operands(node: ast.Compare) -> list[ast.expr]:
    """A comparison's operands, the members of a literal tuple, list or set among them too."""
    found: list[ast.expr] = []
    for operand in [node.left, *node.comparators]:
        if isinstance(operand, ast.Tuple | ast.List | ast.Set):
            found.extend(operand.elts)
        else:
            found.append(operand)
    return found


def _names_a_stage(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in STAGE_CONSTANTS
    if isinstance(node, ast.Attribute):
        return node.attr in STAGE_CONSTANTS
    if isinstance(node, ast.Subscript):
        table = node.value
        name = table.id if isinstance(table, ast.Name) else getattr(table, "attr", "")
        return name in STAGE_TABLES
    return isinstance(node, ast.Constant) and node.value in STAGE_NAMES


def stage_branches(source: str, filename: str) -> list[str]:
    """`file:line` of every comparison in `source` against a named stage."""
    return [
        f"{filename}:{node.lineno}"
        for node in ast.walk(ast.parse(source, filename))
        if isinstance(node, ast.Compare) and any(map(_names_a_stage, _operands(node)))
    ]


def test_no_module_outside_the_stage_table_asks_which_stage_it_holds() -> None:
    root = Path(mvpipe.__file__).parent
    table = root / "pipeline" / "stages.py"
    modules = [path for path in sorted(root.rglob("*.py")) if path != table]
    assert len(modules) > 90  # the walk did find the package
    found = [
        branch
        for path in modules
        for branch in stage_branches(path.read_text(), str(path.relative_to(root)))
    ]
    assert found == []


def test_the_check_finds_each_kind_of_stage_branch_and_nothing_else() -> None:
    planted = "\n".join(
        [
            "if stage is GENERATE: pass",  # 1
            "if self.stage is not stages.LIPSYNC: pass",  # 2
            "if stage.name == 'generate': pass",  # 3
            "if stage in (CUT, LIPSYNC): pass",  # 4
            "if next_stage(scene) is STAGES[0]: pass",  # 5
            "if BY_NAME['cut'] != stage: pass",  # 6
            "key = GENERATE.output(scene)",  # allowed: reading a stage's data
            "if stage.paid and stage.runner is None: pass",  # allowed: a field
            "if stage.name == name: pass",  # allowed: no stage named
            "carried = BY_NAME[stage or 'generate']",  # allowed: a lookup, no comparison
        ]
    )
    assert stage_branches(planted, "planted.py") == [f"planted.py:{n}" for n in range(1, 7)]
