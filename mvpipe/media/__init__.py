"""Media: song decoding and analysis, slots, cutting and assembly — pure functions on bytes/paths.

Nothing here touches the store, Celery or settings: callers pass every parameter explicitly, so the
same code runs in a worker, a test or a benchmark. Importing the package stays cheap (librosa and
numba load only when a song is analysed), because every worker process imports it.
"""
