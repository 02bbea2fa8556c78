"""d2lrun: the experiments of Dive into Deep Learning (chapters 2-6), run from Hydra configs.

From Python or Jupyter (d2lrun.api):
    run = d2lrun.train("model=lenet", "trainer.epochs=2")   # as `d2lrun model=lenet ...`
    run.metrics, run.summary, run.plot()                    # a DataFrame, metrics.json, a Figure
    d2lrun.sweep("optim.lr=0.01,0.1"), d2lrun.report(DIR)   # a sweep's table as a DataFrame
    d2lrun.load_run(DIR)                                    # a saved run, as train returns it
"""

__version__ = "0.2.0"
__all__ = ["train", "sweep", "report", "load_run"]


def __getattr__(name: str):
    # Imported on first use, so that `import d2lrun` (and `d2lrun --help`) does not import torch.
    if name in __all__:
        from d2lrun import api

        return getattr(api, name)
    raise AttributeError(f"module 'd2lrun' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
