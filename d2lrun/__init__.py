"""d2lrun: the experiments of Dive into Deep Learning (chapters 2-6), run from Hydra configs."""

__version__ = "0.2.0"


def __getattr__(name: str):
    # `from d2lrun import load_run` without importing torch for `d2lrun --help`.
    if name == "load_run":
        from d2lrun.reload import load_run

        return load_run
    raise AttributeError(f"module 'd2lrun' has no attribute {name!r}")
