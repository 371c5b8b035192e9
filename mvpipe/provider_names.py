"""The providers mvpipe knows, by name: one definition for the project spec, the settings and
the price table. Imports nothing, so the pure layer (`models`, `pricing`) may read it."""

from __future__ import annotations

#: The video providers a project may name (settings add how each is reached).
VIDEO_PROVIDERS = ("local", "veo", "replicate")
#: The lip-sync providers `MVPIPE_LIPSYNC_PROVIDER` may name.
LIPSYNC_PROVIDERS = ("local", "replicate")
#: Every provider a price may name (`MVPIPE_PRICES`).
PROVIDERS = tuple(dict.fromkeys(VIDEO_PROVIDERS + LIPSYNC_PROVIDERS))
