"""Final videos in S3: `projects/{projectId}/final/{inputsHash}.mp4`.

The hash covers the song, every scene's chosen clip in order and the output format, so the same
inputs always name the same object: an assembly that finds it can reuse it. Earlier final videos
stay under `final/` as the project's history (reconcile never collects them).
"""

from __future__ import annotations

import re

from mvpipe.errors import InvalidInput
from mvpipe.models import validate_project_id
from mvpipe.store.clips import PROJECTS_PREFIX

_HASH = re.compile(r"^[0-9a-f]{16}$")


def final_prefix(project_id: str) -> str:
    return f"{PROJECTS_PREFIX}{validate_project_id(project_id)}/final/"


def final_video_key(project_id: str, inputs_hash: str) -> str:
    if not isinstance(inputs_hash, str) or not _HASH.match(inputs_hash):
        raise InvalidInput("a final video's key needs its inputs hash as 16 lowercase hex digits")
    return f"{final_prefix(project_id)}{inputs_hash}.mp4"
