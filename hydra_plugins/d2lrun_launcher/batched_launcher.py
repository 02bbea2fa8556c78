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

    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        hydra_context.config_loader = Composed(hydra_context.config_loader)  # the sweeper's too

    def launch(self, job_overrides, initial_job_idx):
        from d2lrun.batched import launch

        return launch(self, job_overrides, initial_job_idx)


class Composed:
    """Hydra's config loader, composing each job once: Hydra's basic sweeper composes every job to
    check it, then hands the launcher the overrides to compose again; the launcher takes the
    sweeper's. A job whose overrides differ from a job's composed before only in the values of
    keys (optim.lr=1 after optim.lr=0.1) is that job's config copied, with its values set as Hydra
    sets them: 5 ms, where Hydra composes a job in 0.1 s (a 16-job softmax sweep: 1.6 s of 11)."""

    def __init__(self, loader) -> None:
        self.loader, self.kept, self.shapes, self.groups = loader, {}, {}, set()

    def load_sweep_config(self, master_config, sweep_overrides):
        lines = tuple(sweep_overrides)
        cfg = self.kept[lines] = self.compose(master_config, list(lines))
        return cfg

    def take(self, master_config, sweep_overrides):
        """The job's config: the one composed before (once), else composed now."""
        cfg = self.kept.pop(tuple(sweep_overrides), None)
        return cfg or self.compose(master_config, list(sweep_overrides))

    def compose(self, master_config, lines: list[str]):
        import copy

        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.core.override_parser.types import OverrideType
        from omegaconf import OmegaConf

        parsed = OverridesParser.create().parse_overrides(lines)

        def values() -> list:  # of keys; not of groups (those of the configs Hydra composed)
            return [o for o in parsed if o.type == OverrideType.CHANGE and o.package is None
                    and not o.is_hydra_override() and not isinstance(o.value(), dict)  # merged
                    and o.key_or_group not in self.groups]  # fmt: skip

        def shape() -> tuple:  # the other lines, and the keys whose values are set
            keys = {id(o) for o in values()}
            return tuple(o.key_or_group if id(o) in keys else o.input_line for o in parsed)

        known = self.shapes.get(shape())
        if known is None:
            cfg = self.loader.load_sweep_config(master_config, lines)
            self.groups |= set(cfg.hydra.runtime.choices)  # init=xavier: not a key's value
            self.shapes[shape()] = copy.deepcopy(cfg)
            return cfg
        cfg = copy.deepcopy(known)  # as ConfigLoaderImpl._load_configuration_impl sets them
        ConfigLoaderImpl._apply_overrides_to_config(values(), cfg)
        task = [o for o in parsed if not o.is_hydra_override()]
        cfg.hydra.overrides.task = [o.input_line for o in task]
        names = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            task, exclude_keys=names.exclude_keys, item_sep=names.item_sep, kv_sep=names.kv_sep
        )
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)  # as load_sweep_config
        return cfg

    def __getattr__(self, name):
        return getattr(self.loader, name)
