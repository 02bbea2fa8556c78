"""d2lrun's launcher for `hydra/launcher=slurm` (configs/hydra/launcher/slurm.yaml).

Hydra instantiates launchers only from the hydra_plugins package, and imports every module in it at
each start: this one stays light and hands the work to slurm.py beside it.
"""

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as SubmititSlurmLauncher,
    )
except ImportError:  # installed without d2lrun[sweeps]: no SLURM launcher, and no warning at start
    pass
else:

    class SlurmLauncher(SubmititSlurmLauncher):
        """The submitit plugin's launcher (same keys, sbatch file, job array), waiting on squeue."""

        def launch(self, job_overrides, initial_job_idx):
            from hydra_plugins.d2lrun_launcher.slurm import launch

            return launch(self, job_overrides, initial_job_idx)
