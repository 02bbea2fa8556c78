"""What can go wrong, as one family of exceptions that carry their exit code.

    UsageError   2    a bad config value, a missing file, a checkpoint that does not fit
    RunFailed    1    the run itself failed: divergence (Diverged), a full disk, a bug (Bug)
    Interrupted  130  Ctrl-C; 128 + N for signal N (143 SIGTERM): what was saved, how to go on

str(error) is the one line the user sees: the bad value, what is allowed, and "Fix: ...".
d2lrun.config.messages.explain turns any other exception (Hydra's, OmegaConf's, the OS's) into
one of these.
"""

import difflib
import sys


class D2lrunError(Exception):
    """A failure the user can act on; exit_code is what the command exits with."""

    exit_code = 1


class UsageError(D2lrunError):
    exit_code = 2


class RunFailed(D2lrunError):
    exit_code = 1


class Diverged(RunFailed):
    """The training loss became NaN or infinite."""


class Bug(RunFailed):
    """An exception d2lrun did not expect: its type and first line, and where the traceback is."""


class Interrupted(D2lrunError):
    """Ctrl-C, or a stop signal (d2lrun.stopping.stop_signals): exits 128 + the signal's number."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum


def note(message: str) -> None:
    """What d2lrun did on the user's behalf that they should know, as one line on stderr."""
    print(f"note: {message}", file=sys.stderr)


def listed(names, most: int = 20) -> str:
    """names joined by commas; of a longer list (3,000 columns), the first `most`, and how many."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(map(str, names[:most])) + more


def alike(name: str, names) -> str | None:
    """The one of names that is name but for case or spaces at its ends (Y: ' y '), else the one
    spelled most like it."""
    names = [str(n) for n in names]
    same = [n for n in names if n.lower().strip() == str(name).lower().strip()]
    return (same or difflib.get_close_matches(str(name), names, n=1, cutoff=0.6) or [None])[0]


def chained(e: BaseException | None):
    """e, then what it was raised from or while handling, down the chain as a traceback shows it
    (raise ... from None ends it)."""
    while e is not None:
        yield e
        e = e.__cause__ if e.__cause__ is not None or e.__suppress_context__ else e.__context__
