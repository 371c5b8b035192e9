"""The estimate of a stored project through the API, against a real moto server: a scene the
project does not have, or a project that does not exist, is refused with a typed error."""

from __future__ import annotations

import uuid

import pytest

from mvpipe import api
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import InvalidInput, NotFound

pytestmark = pytest.mark.integration


def test_an_estimate_names_only_scenes_and_projects_that_exist(stack: LocalStack) -> None:
    scenes = [{"prompt": f"scene {n}", "duration_seconds": 4} for n in (1, 2)]
    project_id = api.create_project("Estimate", "Two scenes.", scenes=scenes)

    assert api.estimate_micros(project_id, 2).jobs == 1  # regenerating scene 2: one job
    with pytest.raises(InvalidInput, match=f"project {project_id} has no scene 3"):
        api.estimate_micros(project_id, 3)
    with pytest.raises(NotFound):
        api.estimate_cost(str(uuid.uuid4()))
