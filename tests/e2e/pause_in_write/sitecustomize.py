"""Loaded by a d2lrun process whose PYTHONPATH holds this folder (tests/e2e/test_kill_9.py): it
makes d2lrun.files.atomic_write stop at one moment of one write and say so on stderr, so that the
test can kill -9 the process exactly there.

    D2LRUN_PAUSE_FILE=last.pt    the file whose write stops
    D2LRUN_PAUSE_AT=2            at its 2nd write
    D2LRUN_PAUSE_STAGE=          half: half the bytes are in the temporary file
                                 synced: the temporary is complete and synced, not yet renamed
                                 renamed: renamed over the old file, the folder not yet synced
"""

import os
import sys
import time

FILE = os.environ.get("D2LRUN_PAUSE_FILE")
if FILE:
    import d2lrun.files as files

    AT = int(os.environ.get("D2LRUN_PAUSE_AT", "1"))
    STAGE = os.environ["D2LRUN_PAUSE_STAGE"]
    writes = 0

    def pause(stage: str) -> None:
        if stage == STAGE:
            print(f"PAUSED {stage} {FILE} write {writes}", file=sys.stderr, flush=True)
            time.sleep(600)  # the test kills the process here

    class HalfThenPause:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def write(self, data: bytes) -> int:
            half = len(data) // 2
            self.f.write(data[:half])
            self.f.flush()
            os.fsync(self.f.fileno())
            pause("half")
            return half + self.f.write(data[half:])

        def __getattr__(self, name):
            return getattr(self.f, name)

    class Os:
        """d2lrun.files's `os`: the real module, with replace and the folder's open watched."""

        def __getattr__(self, name):
            return getattr(os, name)

        def replace(self, src, dst):
            pause("synced")
            os.replace(src, dst)

        def open(self, path, flags, *args):
            fd = os.open(path, flags, *args)
            pause("renamed")  # atomic_write opens the folder right after the rename, to sync it
            return fd

    real_write = files.atomic_write

    def atomic_write(path, data):
        global writes
        if os.path.basename(path) != FILE:
            return real_write(path, data)
        writes += 1
        if writes != AT:
            return real_write(path, data)
        files.open = lambda p, mode: HalfThenPause(open(p, mode))
        files.os = Os()
        try:
            return real_write(path, data)
        finally:
            del files.open
            files.os = os

    files.atomic_write = atomic_write
