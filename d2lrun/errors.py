"""What can go wrong, as exceptions carrying their exit code, and library errors translated.

    UsageError   2    a bad config value, a missing file, a checkpoint that does not fit
    RunFailed    1    the run itself failed: divergence (Diverged), disk full
    Interrupted  130  Ctrl-C; a KeyboardInterrupt, so that nothing on the way treats it as an error
    Abort        1    stops the command from a Hydra callback (whose Exceptions Hydra only warns of)

str(error) is the one line the user sees: the bad value, what is allowed, and "Fix: ...".
Each entry point in d2lrun.cli catches these in one place; d2lrun.job records them in metrics.json.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from enum import Enum


class D2lrunError(Exception):
    """A failure the user can act on."""

    exit_code = 1


class UsageError(D2lrunError):
    exit_code = 2


class RunFailed(D2lrunError):
    exit_code = 1


class Diverged(RunFailed):
    """The training loss became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C; the message says what was saved and how to go on."""

    exit_code = 130


class Abort(BaseException):
    """Stop the command: an unwritable output folder, a sweep whose jobs did not all complete."""

    exit_code = 1


def translate(e: BaseException) -> D2lrunError | Interrupted | Abort | None:
    """The one-line error for an error of d2lrun, Hydra, OmegaConf or the OS; None for a bug."""
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(e, (D2lrunError, Interrupted, Abort)):
        return e
    if isinstance(e, KeyboardInterrupt):
        return Interrupted("interrupted before training started; nothing was saved.")
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options:
        group, _, name = e.missing_cfg_file.rpartition("/")
        return UsageError(
            f"Unknown {group} '{name}'. Choose one of: {', '.join(sorted(e.options))}. "
            f"Fix: {group}={_closest(name, e.options)}."
        )
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return UsageError(
            _config_message(
                cause.full_key, getattr(cause, "value", None), getattr(cause, "object_type", None)
            )
        )
    # A config file of a group sets a key the chosen option lacks (regularizer=dropout on linreg).
    found = re.search(r"In '(.+?)'.*not in '(\w+)'.*full_key: (\S+)", str(e), re.S)
    if isinstance(e, ConfigCompositionException) and found:
        from d2lrun.config import SCHEMAS

        origin, schema_name, key = found.groups()
        schema = next(
            (s for o in SCHEMAS.values() for s in o.values() if s.__name__ == schema_name), None
        )
        message = _config_message(key, None, schema).replace(
            " is not a key", ", which is not a key", 1
        )
        return UsageError(f"{origin.replace('/', '=')} sets {message}")
    if isinstance(e, (ConfigCompositionException, OverrideParseException, OmegaConfBaseException)):
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return UsageError(
            " ".join(lines[:2]) + " Fix: see `d2lrun --help` for the keys and options."
        )
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        return RunFailed(
            f"{e.strerror or e}{where}. Fix: free disk space or choose a writable folder "
            f"(hydra.run.dir=DIR)."
        )
    return None


def _closest(name: str, options) -> str:
    return (difflib.get_close_matches(name, list(options), n=1, cutoff=0) or sorted(options))[0]


def _config_message(key: str, value, schema) -> str:
    """One line for a bad override: an unknown key, or a value of the wrong type; a working fix."""
    from d2lrun.config import SCHEMAS, options_with_key

    fields = (
        {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    )
    section, _, name = key.rpartition(".")
    if name not in fields:  # a key the chosen option does not have
        owners = [o for o, s in SCHEMAS.get(section, {}).items() if s is schema]
        where = f"{section}={owners[0]}" if len(owners) == 1 else section or "the config"
        has = options_with_key(section, name) if schema in SCHEMAS.get(section, {}).values() else []
        fix = f"choose {' or '.join(f'{section}={o}' for o in has)}" if has else f"drop {key}"
        keys = ", ".join(fields) or "none"
        return f"{key} is not a key of {where} (its keys: {keys}). Fix: {fix}."
    field, kind = fields[name], typing.get_type_hints(schema)[name]
    if isinstance(kind, type) and issubclass(kind, Enum):
        allowed = [m.value for m in kind]
        return (
            f"{key}={value} is not one of {', '.join(allowed)}. "
            f"Fix: {key}={_closest(str(value), allowed)}."
        )
    what = {int: "a whole number", float: "a number", bool: "true or false"}.get(kind, "a list")
    example = field.metadata.get("example")
    return f"{key}={value} is not {what}. Fix: {key}={example if example is not None else '...'}."
