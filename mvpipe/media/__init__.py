"""Media: song decoding and analysis, slots, cutting and assembly — pure functions on bytes/paths.

Nothing here touches the store, Celery or settings: callers pass every parameter explicitly, so the
same code runs in a worker, a test or a benchmark. Importing the package stays cheap (librosa and
numba load only when a song is analysed), because every worker process imports it.

    audio      decode any song to mono samples (PyAV), slice, write WAV
    synth      a song with known beats, bars and sections (demo and tests)
    timeline   the analysis result as data, with its JSON form
    analysis   tempo, beats, bars, sections (librosa); warm() for worker start-up
    slots      the song cut into beat-aligned slots on the frame grid
    encoding   the output format and the one set of H.264 parameters
    cut        a clip to exactly a slot's frames in the output format
    assemble   cuts joined by remux, the song as AAC; the final video's inputs hash
    probe      what a player sees in a finished video (codecs, size, rate, seconds)
    files      write-then-rename, so no half-written file carries a real name
"""
