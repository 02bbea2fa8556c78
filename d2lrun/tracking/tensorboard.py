"""logger=tensorboard: event files in the run's folder, the config as TensorBoard's hparams."""

import functools
import threading
from contextlib import contextmanager
from pathlib import Path

from d2lrun.tracking import Tracker, flatten, metrics_of, why

# A run's status as TensorBoard's session status (interrupted, to go on: unknown).
SESSION_STATUS = {"completed": "SUCCESS", "diverged": "FAILURE", "failed": "FAILURE"}


class TensorBoard(Tracker):
    """Event files in RUN/tensorboard/: a scalar per metric per epoch, the config as hparams."""

    def __init__(self, run_dir: Path, log):
        from torch.utils.tensorboard import SummaryWriter

        self.SummaryWriter, self.folder, self.log = SummaryWriter, run_dir / "tensorboard", log
        # Its writer's thread prints the traceback of a failed write (a full disk) as it dies; the
        # writer raises that error again in the run's thread, where _writing makes it a note.
        if not getattr(threading.excepthook, "d2lrun", False):
            threading.excepthook = functools.partial(quiet_writer, threading.excepthook)
            threading.excepthook.d2lrun = True

    def start(self, config: dict, rows: list[dict]) -> None:
        self.config, self.writer = config, None  # None again once a write failed: no more logged
        # Resumed in place, its earlier epochs are logged already; purge_step hides those after
        # its checkpoint. Into a new folder, they are logged again: it has all, as metrics.csv.
        again = self.folder.is_dir() and rows
        purge = rows[-1]["epoch"] + 1 if again else None
        with self._writing():
            self.writer = self.SummaryWriter(log_dir=str(self.folder), purge_step=purge)
        for row in [] if again else rows:
            self.log_epoch(row)

    def log_epoch(self, row: dict) -> None:
        if self.writer is None:
            return
        with self._writing():
            for name, value in metrics_of(row).items():
                self.writer.add_scalar(name, value, row["epoch"])
            self.writer.flush()  # `tensorboard --logdir` shows the epoch now, not two minutes later

    def finish(self, status: str, summary: dict, run_dir: Path) -> None:
        """The HParams view: the config and status, with the final metrics and best_<metric>."""
        # Not SummaryWriter.add_hparams: it writes a second run folder, with a copy of each metric.
        from tensorboard.plugins.hparams.api_pb2 import Status
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
        from torch.utils.tensorboard.summary import hparams
        from torch.utils.tensorboard.writer import FileWriter

        if self.writer is None:
            return
        names = list(metrics_of(summary.get("final") or {}))
        if best := summary.get("best"):
            names.append(f"best_{best['metric']}")
        with self._writing():
            self.writer.close()
            # In a file of its own, which the next finish replaces: TensorBoard shows the first
            # hparams a folder holds, so a run resumed in place would stay "interrupted".
            before = list(self.folder.glob("*.hparams"))
            writer = FileWriter(str(self.folder), filename_suffix=".hparams")
            config = flatten(self.config) | {"status": status}
            *parts, end = hparams(config, dict.fromkeys(names, 0.0))
            # torch ends every session a success; the HParams view filters them by this status
            plugin = end.value[0].metadata.plugin_data
            data = HParamsPluginData.FromString(plugin.content)
            ended = SESSION_STATUS.get(status, "UNKNOWN")
            data.session_end_info.status = Status.Value(f"STATUS_{ended}")
            plugin.content = data.SerializeToString()
            for part in (*parts, end):
                writer.add_summary(part)
            writer.close()
            for path in before:
                path.unlink(missing_ok=True)

    @contextmanager
    def _writing(self):
        """Its writes while the run trains: a failure (a full disk, a folder made read-only) is a
        note, and the last: the run's own files are its record."""
        try:
            yield
        except Exception as e:
            self.log(f"note: TensorBoard logging to {self.folder} stopped ({why(e)}); training "
                     f"goes on")  # fmt: skip
            self.writer = None


def quiet_writer(hook, args) -> None:
    """threading.excepthook but for TensorBoard's writer thread, whose error is raised again."""
    if type(args.thread).__name__ != "_AsyncWriterThread":
        hook(args)
