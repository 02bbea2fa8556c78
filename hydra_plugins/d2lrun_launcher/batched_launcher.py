"""d2lrun's launcher for `hydra/launcher=batched` (configs/hydra/launcher/batched.yaml).

Hydra instantiates launchers only from the hydra_plugins package, and imports every module in it at
each start: this one stays light and hands the work to d2lrun.batched.
"""

from hydra._internal.core_plugins.basic_launcher import BasicLauncher


class BatchedLauncher(BasicLauncher):
    """Hydra's basic launcher (every job in this process), but jobs that differ only in what one
    stack of models carries per member train together (d2lrun.batched)."""

    def __init__(self, max_members: int | None = None) -> None:
        super().__init__()
        self.max_members = max_members

    def launch(self, job_overrides, initial_job_idx):
        from d2lrun.batched import launch

        return launch(self, job_overrides, initial_job_idx)
