"""The schema: wrong types fail while Hydra composes, out-of-range values in `checked`; every
message is one line naming the key, the value and a working fix."""

import contextlib
import errno
import signal
import sys

import pytest
from omegaconf import OmegaConf

from d2lrun.config import checked, compose, example, resolve_device
from d2lrun.config.messages import explain
from d2lrun.errors import Bug, D2lrunError, Diverged, Interrupted, RunFailed, UsageError
from d2lrun.stopping import Stop


def message(*overrides) -> str:
    """The one line a user sees for these overrides (what d2lrun.cli.handle prints after 'error:
    ')."""
    with pytest.raises(BaseException) as info:
        checked(compose(list(overrides)))
    error = explain(info.value)
    assert isinstance(error, UsageError), info.value
    assert "\n" not in str(error)
    return str(error)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("optim.lr=fast", "optim.lr=fast is not a number. Fix: optim.lr=0.03."),
        (
            "optim.lr=0",
            "optim.lr=0.0 is out of range: it must be greater than 0. Fix: optim.lr=0.03.",
        ),
        (
            "optim.lr=-1",
            "optim.lr=-1.0 is out of range: it must be greater than 0. Fix: optim.lr=0.03.",
        ),
        (
            "optim.lr=nan",  # NaN is neither > 0 nor <= 0: it trained, and 'diverged'
            "optim.lr=nan is out of range: it must be a finite number. Fix: optim.lr=0.03.",
        ),
        (
            "optim.weight_decay=inf",
            "optim.weight_decay=inf is out of range: it must be a finite number. "
            "Fix: optim.weight_decay=0.",
        ),
        (
            "trainer.epochs=0",
            "trainer.epochs=0 is out of range: it must be at least 1. Fix: trainer.epochs=3.",
        ),
        (
            "trainer.batch_size=0",
            "trainer.batch_size=0 is out of range: it must be at least 1. "
            "Fix: trainer.batch_size=10.",
        ),
        (
            "optim.weight_decay=-0.1",
            "optim.weight_decay=-0.1 is out of range: it must be at least 0. "
            "Fix: optim.weight_decay=0.0.",
        ),
        (
            "optim.momentum=1.5",
            "optim.momentum=1.5 is out of range: it must be less than 1. Fix: optim.momentum=0.0.",
        ),
        ("trainer.epochs=ten", "trainer.epochs=ten is not a whole number. Fix: trainer.epochs=3."),
        (  # its Fix was trainer.epochs=3, dropping the number the user wrote
            "dataset.num_train=5e4",
            "dataset.num_train=50000.0 is not a whole number as written. "
            "Fix: dataset.num_train=50000.",
        ),
        (  # but not to a number out of its range, which pasted would be refused
            "trainer.epochs=0.0",
            "trainer.epochs=0.0 is not a whole number. Fix: trainer.epochs=3.",
        ),
        (
            "trainer.progress=maybe",
            "trainer.progress=maybe is not true or false. Fix: trainer.progress=true.",
        ),
        (
            "model.impl=foo",
            "model.impl=foo is not one of concise, scratch. Fix: model.impl=concise.",
        ),
        (
            "model=lenett",
            "Unknown model 'lenett'. Choose one of: conv2d, lenet, linreg, mlp, softmax. "
            "Fix: model=lenet.",
        ),
        (  # the same but for case: it said Fix: model=linreg
            "model=MLP",
            "Unknown model 'MLP'. Choose one of: conv2d, lenet, linreg, mlp, softmax. "
            "Fix: model=mlp.",
        ),
        (  # the one option that holds it, as written: it said Fix: dataset=synthetic
            "dataset=FashionMNIST",
            "Unknown dataset 'FashionMNIST'. Choose one of: csv, fashion_mnist, kaggle_house, "
            "kernel, polynomial, synthetic. Fix: dataset=fashion_mnist.",
        ),
        (  # or that it holds: it said Fix: model=linreg
            "model=softmax_regression",
            "Unknown model 'softmax_regression'. Choose one of: conv2d, lenet, linreg, mlp, "
            "softmax. Fix: model=softmax.",
        ),
        (  # nothing like it: config.yaml's choice, not the nearest of unlike names (conv2d)
            "model=foo",
            "Unknown model 'foo'. Choose one of: conv2d, lenet, linreg, mlp, softmax. "
            "Fix: model=linreg.",
        ),
        (
            "experiment=ch6_lenett",
            "Unknown experiment 'ch6_lenett'. Choose one of: ch3_linreg_concise",
        ),
        (  # Hydra's own group: it said "Unknown hydra 'launcher/joblb' ... Fix: hydra=joblib"
            "hydra/launcher=joblb",
            "Unknown hydra/launcher 'joblb'. Choose one of: basic, batched, joblib, slurm, "
            "submitit_local, submitit_slurm. Fix: hydra/launcher=joblib.",
        ),
        (
            "dataset.root=data",
            "dataset.root is not a key of dataset=synthetic (its keys: name, w, b, noise, "
            "num_inputs, num_train, num_val, folds, shuffle_folds). "
            "Fix: choose dataset=fashion_mnist or dataset=kaggle_house.",
        ),
        ("dataset.num_train=0", "dataset.num_train=0 is out of range: it must be at least 1"),
        ("seed=abc", "seed=abc is not a whole number. Fix: seed=0."),  # a key of config.yaml's own
        ("seed=-1", "seed=-1 is out of range: it must be at least 0. Fix: seed=0."),
        (
            "trainer.epoch=3",  # a typo: the key it is near
            "trainer.epoch is not a key of trainer (its keys: epochs, batch_size, "
            "checkpoint_every, progress, compile, log_rmse). "
            "Fix: write trainer.epochs instead of trainer.epoch.",
        ),
        *(  # the book's names at the top: they said 'Fix: drop num_epochs'
            (
                f"{key}=1",
                f"{key} is not a key of the config (its keys: device, seed, resume, "
                f"trainer, dataset, model, optim, regularizer, init, logger). Fix: write {fix} "
                f"instead of {key}.",
            )
            for key, fix in [
                ("num_epochs", "trainer.epochs"),
                ("lr", "optim.lr"),
                ("batch_size", "trainer.batch_size"),
                ("seeds", "seed"),
            ]
        ),  # fmt: skip
        ("trainer=5", "trainer is a section of keys, not a value. Fix: trainer.epochs=3."),
        (  # int | None: a whole number, and a working value from the YAML's comment, not null
            "dataset.num_inputs=abc",
            "dataset.num_inputs=abc is not a whole number. Fix: dataset.num_inputs=200.",
        ),
        ("dataset.folds=x", "dataset.folds=x is not a whole number. Fix: dataset.folds=5."),
        (  # added with +: refused as a typo is, not ignored
            "+optim.nesterov=true",
            "optim.nesterov is not a key of optim=sgd (its keys: name, lr, momentum, "
            "weight_decay). Fix: drop optim.nesterov.",
        ),
        ("+trainer.foo=1", "trainer.foo is not a key of trainer (its keys: epochs,"),
        (  # a key without a range takes any number but nan and inf
            "init=normal init.mean=nan",
            "init.mean=nan is out of range: it must be a finite number. Fix: init.mean=0.0.",
        ),
        (  # Any-typed keys (one value or a list), checked as the book uses them
            "model=mlp model.num_hiddens=1.5",
            "model.num_hiddens=1.5 is not a width or a list of widths (whole numbers). "
            "Fix: model.num_hiddens=[256].",
        ),
        ("model=mlp model.num_hiddens=[]", "model.num_hiddens=[] is not a width or a list of"),
        ("model=mlp model.dropout=null", "model.dropout=null is not a rate. Fix: model.dropout=0"),
        (
            "model=conv2d dataset=kernel model.kernel_size=[1,2,3]",
            "model.kernel_size=[1,2,3] is not (height, width). Fix: model.kernel_size=[1,2].",
        ),
        (  # an item written as a float: the list as the Fix, not the item (=3, not a list)
            "model=conv2d dataset=kernel model.kernel_size=[3.0,3]",
            "model.kernel_size[0]=3.0 is not a whole number. Fix: model.kernel_size=[1,2].",
        ),
        (
            "dataset.w=[1,null]",
            "dataset.w=[1,null] is not a number or a list of numbers. Fix: dataset.w=[2,-3.4].",
        ),
        (  # text keys: null or a list is not text
            "device=null",
            "device=null is not text. Fix: device=auto.",
        ),
        (  # a group's name is its option's: it picks none
            "dataset.name=csv",
            "dataset.name is the name of the chosen dataset option; it picks none. "
            "Fix: dataset=csv.",
        ),
        (
            "dataset=kernel model=conv2d dataset.kernel=[]",
            "dataset.kernel=[] is not a row of 1 to 8 numbers",
        ),
        (  # seed 2^32 was seed 0's run again: torch's generator keeps 32 bits
            "seed=4294967296",
            "seed=4294967296 is out of range: it must be less than 4294967296. Fix: seed=0.",
        ),
        (  # beyond int64: "Overflow when unpacking long long (a bug in d2lrun?)"
            "trainer.batch_size=99999999999999999999",
            "trainer.batch_size=99999999999999999999 is out of range: it must be less than "
            "2147483648. Fix: trainer.batch_size=10.",
        ),
        (  # 35! overflows float32
            "dataset=polynomial dataset.max_degree=200",
            "dataset.max_degree=200 is out of range: it must be less than 36. "
            "Fix: dataset.max_degree=20.",
        ),
        (  # Adam's two betas: torch.optim would fail, or ignore a third, with no word
            "optim=adam optim.betas=[0.9]",
            "optim.betas=[0.9] gives 1 value(s); Adam takes two (β1, β2). "
            "Fix: optim.betas=[0.9,0.999].",
        ),
        (  # an item of a list
            "optim=adam optim.betas=[a,1]",
            "optim.betas[0]=a is not a number. Fix: optim.betas=[0.9,0.999].",
        ),
        (
            "optim.xyz=1",  # near no key
            "optim.xyz is not a key of optim=sgd (its keys: name, lr, momentum, weight_decay). "
            "Fix: drop optim.xyz.",
        ),
        (
            "dataset.target=preis€",  # Hydra's grammar reads no € unquoted
            "cannot read the override dataset.target=preis€. "
            "Fix: quote the value: \"dataset.target='preis€'\" (outer quotes for a shell).",
        ),
        # A number or list cut short: it said 'quote the value', and quoted it was not a number
        ("model.num_hiddens=[256,256", "cannot read the override model.num_hiddens=[256,256. "
                                       "Fix: model.num_hiddens=[256,256]."),
        ("optim.lr=[0.1", "cannot read the override optim.lr=[0.1. Fix: optim.lr=0.1."),
        ("optim.lr=0.1,", "cannot read the override optim.lr=0.1,. Fix: optim.lr=0.1."),
        ("optim.lr=0.1,,0.2", "cannot read the override optim.lr=0.1,,0.2. Fix: optim.lr=0.1,0.2."),
        ("trainer.epochs=3)", "cannot read the override trainer.epochs=3). Fix: trainer.epochs=3."),
        # Hydra's 'Could not append to config ... Fix: see `d2lrun --help`'
        ("+trainer.epochs=5", "+trainer.epochs=5 adds trainer.epochs, which the config has "
                              "already. Fix: trainer.epochs=5 (without the +)."),
    ],
)  # fmt: skip
def test_bad_values_name_key_value_and_fix(override, expected):
    assert message(*override.split()).startswith(expected)


@pytest.mark.parametrize(
    "key, fix",  # other libraries' names, too far from the book's for difflib: 'Fix: drop KEY'
    [
        ("optim.learning_rate", "optim.lr"),
        ("learning_rate", "optim.lr"),
        ("optim.wd", "optim.weight_decay"),
        ("trainer.batch", "trainer.batch_size"),
        ("trainer.bs", "trainer.batch_size"),
    ],
)
def test_other_libraries_names_for_a_key_get_the_books(key, fix):
    assert message(f"{key}=1").endswith(f"Fix: write {fix} instead of {key}.")


@pytest.mark.parametrize(
    "override, fix",  # said 'quote the value: "optim.lr =' 0.1'"', which pasted was refused again
    [
        ("optim.lr = 0.1", "optim.lr=0.1"),  # as Python spaces it
        ("dataset.w=(2.0, -3.4)", "dataset.w=[2.0,-3.4]"),  # a tuple: f"dataset.w={w}"
        ("d2lrun trainer.epochs=1", "trainer.epochs=1"),  # a command line pasted as one
        ("trainer.epochs=1 'optim.lr=0.1'", "one override per argument: 'trainer.epochs=1' "
                                            "'optim.lr=0.1'"),  # it quoted the value '1 'optim...
    ],
)  # fmt: skip
def test_an_override_hydra_cannot_read_gets_a_fix_it_can(override, fix):
    assert message(override).endswith(f"Fix: {fix}.")
    if not fix.startswith("one"):
        checked(compose([fix]))


SECTIONS = "device, seed, resume, trainer, dataset, model, optim, regularizer, init, logger"


def test_an_option_given_as_its_files_path_gets_its_name():
    """Fix: experiment/experiments=ch6_lenet, a group that is none; model/configs/model=conv2d."""
    assert message("experiment=experiments/ch6_lenet.yaml").endswith("Fix: experiment=ch6_lenet.")
    assert message("model=configs/model/mlp.yaml").startswith(
        "Unknown model 'configs/model/mlp.yaml'. Choose one of: conv2d, lenet, linreg, mlp, "
        "softmax. Fix: model=mlp."
    )


def test_a_name_like_no_option_gets_the_first_option_not_an_arbitrary_one():
    assert message("experiment=zzzz").endswith("Fix: experiment=ch3_linreg_concise.")
    assert message("model.impl=foo").endswith("Fix: model.impl=concise.")  # the YAML's first


def test_a_quoted_value_hydras_grammar_cannot_read_unquoted_is_taken():
    cfg = compose(["dataset=csv", "dataset.path=x.csv", "dataset.target='preis€'"])
    assert cfg.dataset.target == "preis€"


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (
            ["regularizer=dropout"],
            "regularizer=dropout sets model.dropout, which is not a key of model=linreg "
            "(its keys: name, impl, bias). Fix: choose model=mlp or model=lenet.",
        ),
        (  # a preset's model: "choose model=linreg or model=softmax or model=mlp", round and round
            ["experiment=ch4_dropout_concise", "model=lenet"],
            "experiment=ch4_dropout_concise sets model.impl, which is not a key of model=lenet "
            "(its keys: name, variant, batch_norm, dropout). Fix: model=mlp (the preset's).",
        ),
        (
            ["model=mlp", "regularizer=dropout", "model.dropout=1.0"],
            "model.dropout=1.0 is out of range: it must be less than 1. Fix: model.dropout=0.5.",
        ),
        (
            ["model=mlp", "model.dropout=[0.2,-0.1]"],
            "model.dropout=[0.2,-0.1] is out of range: it must be at least 0. "
            "Fix: model.dropout=0.0.",
        ),
        (
            ["model=mlp", "model.dropout=[0.2,0.5]"],
            "model.dropout=[0.2,0.5] gives 2 rates and model=mlp has 1 hidden layer(s). "
            "Fix: model.dropout=0.2 (one rate for all).",
        ),
        (["regularizer=l1", "regularizer.lambd=-1"], "regularizer.lambd=-1.0 is out of range"),
        (["init=normal", "init.std=0"], "init.std=0.0 is out of range: it must be greater than 0"),
        (["model=lenet", "dataset=synthetic"], "model=lenet needs images"),
        (
            ["model=lenet", "model.batch_norm=true"],
            "model.batch_norm=true belongs to the modern LeNet",
        ),
        (
            ["dataset=csv"],
            "dataset.path is required for dataset=csv. Fix: dataset.path=data/house_tiny.csv.",
        ),
        (["dataset.w=0.5"], "dataset.w=0.5 is one number, so dataset.num_inputs must say how many"),
        (["dataset.num_inputs=3"], "dataset.num_inputs=3 but dataset.w has 2 values"),
        (
            ["dataset=csv", "dataset.drop=Id"],
            "dataset.drop=Id is not a list. Fix: dataset.drop=[Id].",
        ),
        (  # it said 'model.dropout[0]=null is not a list'
            ["model=mlp", "model.dropout=[]"],
            "model.dropout=[] gives 0 rates and model=mlp has 1 hidden layer(s). "
            "Fix: model.dropout=0.0 (one rate for all).",
        ),
        (  # the book's K = [[1, -1]]: it was a ValueError, 'a bug in d2lrun?'
            ["model=conv2d", "dataset.kernel=[[1,-1]]"],
            "dataset.kernel=[[1,-1]] is not a row of 1 to 8 numbers across §6.2.3's 6x8 image. "
            "Fix: dataset.kernel=[1,-1], its edge detector.",
        ),
        (  # wider than the image: the Fix model.kernel_size=[1,9] then failed in torch
            ["model=conv2d", "dataset.kernel=[1,-1,0,0,0,0,0,0,0]"],
            "dataset.kernel=[1.0,-1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0] is not a row of 1 to 8",
        ),
    ],
)
def test_bad_combinations(overrides, expected):
    assert message(*overrides).startswith(expected)


def test_d2lrun_eval_names_no_dataset_option_it_cannot_choose():
    """d2lrun-eval's dataset keys say where the data is; the target is the run's own."""
    from d2lrun.config.messages import explain

    with pytest.raises(Exception) as e:
        compose(["dataset.target=Area"], "eval")
    assert str(explain(e.value)) == (
        "dataset.target is not a key of dataset (its keys: root, path, download). "
        "Fix: drop dataset.target."
    )


def test_d2lrun_evals_run_given_a_list_gets_a_fix_that_names_a_run():
    """It said 'Fix: run=null', which then said 'say which run'."""
    with pytest.raises(Exception) as e:
        compose(["run=[outputs/x]"], "eval")
    assert str(explain(e.value)).endswith("Fix: run=outputs/2026-11-26/10-00-00.")
    with pytest.raises(Exception) as e:
        compose(["ckpt=[x.pt]"], "eval")
    assert str(explain(e.value)).endswith("Fix: ckpt=outputs/2026-11-26/10-00-00/best.pt.")


def test_good_config_passes_is_typed_and_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = checked(compose(["optim.lr=1", "trainer.epochs=2", "model=softmax", "dataset.root=here"]))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.dataset.root == str(tmp_path / "here")


def test_devices():
    import torch

    assert str(resolve_device("cpu")) == "cpu"
    assert str(resolve_device("auto")) == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(
            UsageError, match=r"device=cuda:3 does not exist on this machine; available: cpu"
        ):
            resolve_device("cuda:3")
    with pytest.raises(UsageError, match="Unknown device 'tpu'"):
        resolve_device("tpu")
    for typed, fix in [("CPU", "cpu"), ("GPU", "cuda"), ("Cuda:1", "cuda:1")]:  # said device=auto
        with pytest.raises(UsageError, match=f"Unknown device '{typed}'.* Fix: device={fix}.$"):
            resolve_device(typed)


@pytest.mark.parametrize(
    "error,kind,code,expected",
    [
        (
            KeyboardInterrupt(),
            Interrupted,
            130,
            "interrupted before anything was saved.",
        ),
        (  # it did not name the signal
            Stop(signal.SIGTERM),
            Interrupted,
            143,
            "interrupted by SIGTERM before anything was saved.",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "/tmp/run/last.pt"),
            RunFailed,
            1,
            "No space left on device (/tmp/run/last.pt). Fix: free disk space, or write where "
            "you may: hydra.run.dir=DIR for a run, output=FILE for d2lrun-predict.",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/tmp/run/last.pt"),
            RunFailed,
            1,
            "Permission denied (/tmp/run/last.pt). Fix: write where you may: hydra.run.dir=DIR "
            "for a run, output=FILE for d2lrun-predict.",  # no disk space to free
        ),
        (
            ZeroDivisionError("division by zero\nwhere it happened"),
            Bug,
            1,
            "ZeroDivisionError: division by zero "
            "(a bug in d2lrun? HYDRA_FULL_ERROR=1 shows the traceback)",
        ),
    ],
    ids=["ctrl-c", "sigterm", "disk-full", "permission", "bug"],
)
def test_explain_turns_any_exception_into_one_line_and_its_exit_code(error, kind, code, expected):
    explained = explain(error)
    assert type(explained) is kind and isinstance(explained, D2lrunError)
    assert explained.exit_code == code and str(explained) == expected


def test_explain_reads_hydras_override_parse_error():
    from hydra.errors import OverrideParseException

    with pytest.raises(OverrideParseException) as info:
        compose(["dataset.target=preis€"])
    explained = explain(info.value)
    assert type(explained) is UsageError and explained.exit_code == 2
    assert str(explained) == (
        "cannot read the override dataset.target=preis€. "
        "Fix: quote the value: \"dataset.target='preis€'\" (outer quotes for a shell)."
    )
    # A list's items each: "dataset.drop='[Größe]'" was one string, refused as 'not a list'
    with pytest.raises(OverrideParseException) as info:
        compose(["dataset=csv", "dataset.drop=[Id, Größe]"])
    fix = str(explain(info.value)).split("quote the value: ")[1].split(" (outer")[0]
    assert fix == "\"dataset.drop=['Id','Größe']\""
    assert list(compose(["dataset=csv", fix.strip('"')]).dataset.drop) == ["Id", "Größe"]
    with pytest.raises(OverrideParseException) as info:  # a sweep of lists: each list's items
        compose(["dataset=csv", "dataset.drop=[Größe],[Id]"])
    assert "\"dataset.drop=['Größe'],['Id']\"" in str(explain(info.value))


@pytest.mark.parametrize(
    "error",
    [UsageError("u"), RunFailed("r"), Diverged("d"), Bug("b"), Interrupted("i")],
    ids=lambda e: type(e).__name__,
)
def test_explain_gives_d2lruns_own_errors_back_unchanged(error):
    assert explain(error) is error


def test_example_is_the_chosen_options_own_yaml_value():
    adam = compose(["optim=adam"])
    assert example(adam, "optim.lr") == "0.001"  # configs/optim/adam.yaml, not config.yaml's 0.03
    assert example(adam, "optim.betas") == "[0.9,0.999]"  # a list as it is typed
    assert example(None, "optim.lr", option="adam") == "0.001"  # the option named, no config
    assert example(compose(["init=normal"]), "init.std") == "0.01"
    mlp = compose(["model=mlp"])  # a file of the _global_ package: model/mlp.yaml's model.dropout
    assert example(mlp, "model.dropout") == "0.0" and example(mlp, "model.num_hiddens") == "[256]"
    # regularizer=dropout and =l2 set these keys over the model's and optimizer's 0.0, which
    # would turn off what the user asked for
    dropout = compose(["model=mlp", "regularizer=dropout"])
    assert example(dropout, "model.dropout") == "0.5"
    assert example(compose(["regularizer=l2"]), "optim.weight_decay") == "0.001"
    assert example(compose(["regularizer=l1"]), "regularizer.lambd") == "0.001"


def test_example_falls_back_to_config_yaml():
    cfg = compose()  # optim=sgd: configs/optim/sgd.yaml has no lr
    assert example(cfg, "optim.lr") == "0.03"
    assert example(cfg, "optim.momentum") == "0.0"  # ... but its own momentum
    assert example(cfg, "trainer.epochs") == "3" and example(cfg, "trainer.progress") == "true"
    assert example(cfg, "seed") == "0"  # a key of no group


def test_example_of_a_required_key_is_the_e_g_of_its_comment():
    cfg = compose(
        ["dataset=csv"]
    )  # path: ???  # the CSV file, e.g. dataset.path=data/house_tiny.csv
    assert example(cfg, "dataset.path") == "data/house_tiny.csv"
    assert example(cfg, "dataset.target") == "Price"
    assert example(cfg, "dataset.val_fraction") == "0.2"
    assert example(None, "nope.key") == "..."  # nowhere to take a value from


@pytest.mark.parametrize(
    "value",
    ["/a b/it's", "c:\\runs\\house", "ends in \\", "a\\'b", "q'q'", "preis€", "x\\\\y", "plain"],
)
def test_override_quotes_any_value_so_hydra_reads_it_back_as_it_was(value):
    """Reloading a run passes its saved paths back through Hydra's grammar, which escapes quotes
    and the backslashes before them; a path with a space, a quote or a backslash survives."""
    from d2lrun.config import given
    from d2lrun.files import override

    assert given([override("dataset.path", value)], "dataset.path") == value


def test_a_deleted_group_is_not_a_null_one():
    from d2lrun.config import check_groups

    check_groups(["~experiment"])  # Hydra's delete override: no preset, as without it
    with pytest.raises(UsageError, match="^experiment=null names no preset"):
        check_groups(["experiment=null"])
    with pytest.raises(UsageError) as e:  # it was "logger is required. Fix: logger=...."
        check_groups(["~logger"])
    assert str(e.value) == (
        "~logger picks none of logger's options (none, tensorboard, mlflow). Fix: logger=none."
    )


def test_eval_and_predict_take_one_value_per_key():
    with pytest.raises(UsageError) as e:
        compose(["run=a,b"], "eval")
    assert str(e.value) == (
        "run=a,b gives several values, and d2lrun-eval takes one per key. "
        "Fix: run d2lrun-eval once per value."
    )


@pytest.mark.parametrize(
    "override,what",
    [
        *(
            (o, "picks an option")
            for o in ["init=xavier", "+init=xavier", "+optim=adam", "model=mlp"]
        ),
        # Hydra's 'use +dataset=csv', then a dump of its schema: eval's dataset.* keys are its own
        *((o, "picks an option") for o in ["dataset=fashion_mnist", "+dataset=csv"]),
        # "model is not a key of the config ... Fix: drop model." for model.num_hiddens=[4]
        *((o, "sets a key") for o in ["model.num_hiddens=[4]", "trainer.epochs=3", "seed=1"]),
    ],
)
def test_eval_and_predict_refuse_a_group_or_key_of_d2lruns_in_one_line(override, what):
    """They reload the run with its own options; Hydra said 'use +init=xavier', then a traceback."""
    for name in ("eval", "predict"):
        with pytest.raises(UsageError) as e:
            compose(["run=x", override], name)
        assert str(e.value) == (
            f"{override} {what} of d2lrun's, and d2lrun-{name} reloads the run with the ones it "
            f"trained with. Fix: drop {override} (d2lrun-{name} --help lists its keys)."
        )


def test_a_run_refused_before_it_started_leaves_no_folder(tmp_path, monkeypatch):
    from d2lrun import app

    monkeypatch.chdir(tmp_path)  # the configured outputs/DATE/TIME, claimed then given back
    # ~seed: OmegaConf's error, after the claim; hydra/job_logging=default: its d2lrun.log too
    for args in (["~seed"], ["hydra.run.dir="], ["optim.lr=-1", "hydra/job_logging=default"]):
        with pytest.raises(Exception) as e:
            app.train(args)
        assert isinstance(explain(e.value), UsageError)
    assert not list(tmp_path.iterdir())  # not an empty outputs/DATE/ either, nor outputs/
    (tmp_path / "outputs").mkdir()  # the user's own, empty: it was removed with the run's folder
    with pytest.raises(UsageError):
        app.train(["optim.lr=-1"])
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"] and not any(tmp_path.glob("*/*"))
    (tmp_path / "outputs").rmdir()
    with pytest.raises(UsageError):  # a folder of the user's own ${now:...} names too
        app.train(["optim.lr=-1", "hydra.run.dir=runs/${now:%Y-%m-%d}/${now:%H-%M-%S}"])
    assert not (tmp_path / "runs").exists()
    events = tmp_path / "mine" / "tensorboard" / "events.out.tfevents.1"
    events.parent.mkdir(parents=True)
    events.write_text("the user's")
    with pytest.raises(UsageError):  # the user's folder before the run: kept, with its files
        app.train(["optim.lr=-1", "hydra.run.dir=mine"])
    assert events.read_text() == "the user's"
    assert not (tmp_path / ".hydra").exists()  # hydra.run.dir= would write here


def test_a_disk_full_as_hydra_writes_a_runs_config_leaves_no_folder(tmp_path, monkeypatch):
    """It left the claimed outputs/DATE/TIME with .lock and an empty .hydra/config.yaml."""
    import hydra.core.utils

    from d2lrun import app

    def full(cfg, filename, output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / filename).touch()  # opened, then nothing written
        raise OSError(errno.ENOSPC, "No space left on device", str(output_dir / filename))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hydra.core.utils, "_save_config", full)
    with pytest.raises(RunFailed) as e:
        app.train(["trainer.progress=false"])
    assert "(No space left on device). Fix: free disk space, or" in str(e.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args,reason",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--cfg", "foo"], "argument --cfg/-c: invalid choice: 'foo' (choose from 'job', 'hydra',"),
    ],
)
def test_a_flag_hydras_parser_refuses_is_one_line_not_its_usage_text(args, reason):
    from d2lrun import app

    with pytest.raises(UsageError) as e:
        app.train(args)
    assert str(e.value).startswith(reason)
    assert str(e.value).endswith("Fix: see `d2lrun --help` for the flags and keys.")


@pytest.mark.parametrize(
    "preset,key,value",
    [
        ("ch4_dropout_concise", "model.dropout", "[0.2,0.5]"),
        ("ch4_weight_decay", "optim.weight_decay", "3"),
        ("ch4_weight_decay_concise", "optim.weight_decay", "3"),  # its parent's: it trained
    ],
)
def test_regularizer_none_over_a_preset_that_regularizes_itself_is_refused(preset, key, value):
    """It trained with the preset's dropout or weight decay, labelled regularizer=none."""
    args = [f"experiment={preset}", "regularizer=none"]
    with pytest.raises(UsageError) as e:
        checked(compose(args), args)
    assert str(e.value) == (
        f"experiment={preset} sets {key}={value} itself, which regularizer=none does not undo. "
        f"Fix: {key}=0 as well."
    )
    args.append(f"{key}=0")  # the Fix
    assert not OmegaConf.select(checked(compose(args), args), key)


@pytest.mark.parametrize(
    "preset,option,fix",
    [
        ("ch4_kaggle_house", "regularizer=l2", "optim.weight_decay=0.001"),
        ("ch6_lenet", "init=kaiming", "init.distribution=normal init.bias=0.0"),
    ],
)
def test_an_option_whose_keys_the_preset_sets_is_refused_with_them_all(preset, option, fix):
    """regularizer=l2 over ch4_kaggle_house trained with its weight decay 0, unsaid; init=kaiming
    over ch6_lenet drew from a uniform distribution, its biases nn.Linear's (the preset's)."""
    args = [f"experiment={preset}", option]
    with pytest.raises(UsageError) as e:
        checked(compose(args), args)
    assert str(e.value).startswith(f"experiment={preset} sets ")
    assert str(e.value).endswith(f", over {option}'s {fix.split()[0].partition('=')[2]}. Fix: "
                                 f"{fix} as well.")  # fmt: skip
    args += fix.split()  # the Fix: the option's own values
    cfg = checked(compose(args), args)
    assert all(
        str(OmegaConf.select(cfg, k)) == v for k, _, v in (f.partition("=") for f in fix.split())
    )
    checked(compose([f"experiment={preset}"]), [f"experiment={preset}"])  # its own: as it was


@pytest.mark.parametrize("preset,lr", [("ch4_poly_third", 0.01), ("ch4_poly_underfit", 0.01)])
def test_a_preset_built_on_another_keeps_its_optimizers_step_size(preset, lr):
    """ch4_poly_underfit builds on ch4_poly_third: optim=adam trained Adam with SGD's 0.01."""
    args = [f"experiment={preset}", "optim=adam"]
    with pytest.raises(UsageError, match=f"^experiment={preset} sets optim.lr={lr} for optim=sgd"):
        checked(compose(args), args)


def test_l1s_lambd_typed_over_l2_says_that_l2s_lambda_is_weight_decay(capsys):
    """§4.5 names L2's λ lambd: `experiment=ch4_weight_decay regularizer.lambd=0` reads as the
    book's λ = 0 run, but sets the L1 term and still decays the weights by 3."""
    args = ["experiment=ch4_weight_decay", "regularizer.lambd=0"]
    checked(compose(args), args)
    assert capsys.readouterr().err == (
        "note: regularizer.lambd is the L1 term's strength; L2's λ (§4.5's lambd) is "
        "optim.weight_decay, now 3.0\n"
    )
    checked(compose(args), args, notes=False)  # d2lrun's check ahead of the run's, which says it
    assert capsys.readouterr().err == ""
    for quiet in (["experiment=ch4_weight_decay"], ["regularizer=l1", "regularizer.lambd=0.1"]):
        checked(compose(quiet), quiet)
        assert capsys.readouterr().err == ""


def test_a_data_key_typed_that_the_run_does_not_use_gets_a_note(capsys):
    """dataset.val_fraction=0.2 dataset.folds=2 trained 730/730 on Kaggle's rows, unsaid."""
    for args, line in (
        (["dataset=kaggle_house", "dataset.val_fraction=0.2", "dataset.folds=2"],
         "dataset.val_fraction is not used with dataset.folds=2: each fold holds out 1/2 of the "
         "rows"),
        (["dataset.shuffle_folds=true"],
         "dataset.shuffle_folds is not used with dataset.folds=null: it orders k folds' rows"),
    ):  # fmt: skip
        checked(compose(args), args)
        assert capsys.readouterr().err == f"note: {line}\n"
    for quiet in (["dataset=kaggle_house", "dataset.folds=2"], ["dataset.folds=2",
                  "dataset.shuffle_folds=true"]):  # fmt: skip
        checked(compose(quiet), quiet)
        assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "override,fix",
    [("optim=5", "Unknown optim '5'. Choose one of: adam, sgd. Fix: optim=sgd."),
     ("model=true", "Unknown model 'true'. Choose one of: conv2d, lenet, linreg, mlp, softmax. "
                    "Fix: model=linreg."),
     ("model=1,mlp", "Unknown model '1'."),
     ("experiment=3", "Unknown experiment '3'. Choose one of: ch3_linreg_concise, ")],
)  # fmt: skip
def test_a_group_given_a_number_or_true_is_an_unknown_option_not_a_bug(override, fix):
    """Hydra: 'ValueError: Config group override must be a string or a list. Got int'."""
    from d2lrun.config import check_groups

    with pytest.raises(UsageError) as e:
        check_groups([override])
    assert str(e.value).startswith(fix)


@pytest.mark.parametrize(
    "line,expected",
    [("Sweep parameters 'optim.lr=range(0.1,0.3,0.1)' requires --multirun",
      "optim.lr=range(0.1,0.3,0.1) gives several values, which only a sweep runs. Fix: d2lrun -m "
      "optim.lr=range(0.1,0.3,0.1) (one run per value), or one value."),
     ("Sweep parameters 'model=glob(l*)' requires --multirun",  # -m of glob() is refused too
      "model=glob(l*) gives several values, which only a sweep runs. Fix: d2lrun -m "
      "model=lenet,linreg (one run per value), or one value."),
     ("Ambiguous value for argument 'dataset.path=c/a,b.csv'",  # quoted, it is one file
      "dataset.path=c/a,b.csv gives several values, which only a sweep runs. Fix: "
      "\"dataset.path='c/a,b.csv'\" (a file name with a comma, quoted), or d2lrun -m "
      "dataset.path=c/a,b.csv (one run per value), or one value."),
     ("Ambiguous value for argument 'dataset.target=Price, USD'",  # it offered only a sweep
      "dataset.target=Price, USD gives several values, which only a sweep runs. Fix: "
      "\"dataset.target='Price, USD'\" (a column name with a comma, quoted), or d2lrun -m "
      "dataset.target=Price, USD (one run per value), or one value.")],
)  # fmt: skip
def test_a_range_without_m_says_to_sweep_it_as_a_list_does(line, expected):
    from hydra.errors import ConfigCompositionException

    assert str(explain(ConfigCompositionException(line))) == expected


def test_shell_completions_query_run_by_hand_says_how_completion_is_installed():
    error = explain(KeyError("COMP_LINE"))
    assert isinstance(error, UsageError) and str(error).endswith(
        'Fix: eval "$(d2lrun --shell-completion install=bash)", then press Tab.'
    )


@pytest.mark.parametrize(
    "args,line",
    [  # each was 'ValueError/SearchPathException ... (a bug in d2lrun?)' and exit 1, or cut short
        (["--resolve"], "--resolve resolves what --cfg shows. Fix: d2lrun --cfg job --resolve."),
        (["-cd", "/nonexistent"], "--config-dir /nonexistent is not a folder. Fix: a folder of "
                                  "YAML files to add, or drop it."),
        (["--experimental-rerun", "x.pickle"], "--experimental-rerun is not d2lrun's: resume=RUN "
                                               "goes on with a saved run. Fix: drop "
                                               "--experimental-rerun."),
        (["-cn", "foo"], "--config-name foo: d2lrun runs its own config (config.yaml). Fix: drop "
                         "it; a preset is experiment=NAME."),
        # 'Cannot find primary config ... Config search path: Fix: see d2lrun --help', cut short
        (["-cp", "/tmp"], "--config-path /tmp: d2lrun runs its own configs. Fix: drop it; "
                          "--config-dir DIR adds a folder of YAML files."),
        # "package 'nosuch' not found in config", no d2lrun line, exit 1
        (["--cfg", "job", "-p", "optim.lrr"], "-p optim.lrr is not in the config (its sections: "
         "device, seed, resume, trainer, dataset, model, optim, regularizer, init, logger). "
         "Fix: -p optim."),
        (["--cfg", "hydra", "-p", "launcher"], "-p launcher is not in the config (its sections: "
                                               "hydra). Fix: -p hydra."),
        # a key of value null: 'not in the config ... Fix: -p resume', the same again
        (["--cfg", "job", "-p", "resume"], "-p resume is null in the config, which Hydra prints "
                                           "as nothing. Fix: drop -p."),
        (["--cfg", "job", "-p", "dataset.folds"], "-p dataset.folds is null in the config, which "
                                                  "Hydra prints as nothing. Fix: -p dataset."),
        (["--cfg", "job", "-p", "hydra.run.dir"], "-p hydra.run.dir is not in the config (its "
         f"sections: {SECTIONS}). Fix: --cfg hydra -p hydra.run.dir."),  # said Fix: -p dataset
        # Hydra swept, and d2lrun, running one job, wrote no table
        (["hydra.mode=MULTIRUN", "optim.lr=0.1,1"], "hydra.mode=MULTIRUN: -m sets Hydra's mode, "
                                                    "for a sweep. Fix: d2lrun -m optim.lr=0.1,1."),
        # -p ignored: a whole run trained; with -m, Hydra's usage text
        (["-p", "optim.lr", "trainer.epochs=1"], "-p optim.lr picks the part of the config --cfg "
                                                 "shows. Fix: d2lrun --cfg job -p optim.lr."),
        (["-m", "-p", "optim.lr", "optim.lr=0.1,0.2", "seed=1"], "-p optim.lr picks the part of "
         "the config --cfg shows. Fix: d2lrun --cfg job -p optim.lr."),
        # with -p, it said "gives several values, which only a sweep runs. Fix: d2lrun -m ..."
        (["-m", "optim.lr=0.1,0.2", "--cfg", "job", "-p", "optim.lr"], "--cfg and --info show one "
         "run's config, not a sweep's. Fix: drop -m and give one value per key (d2lrun "
         "optim.lr=0.1 --cfg job)."),
        # A key empty, or with an empty part: 'ValueError: Config group override must be a string
        # (a bug in d2lrun?)', exit 1; "AssertionError"; "quote the value: trainer..epochs='5'"
        (["=5"], "=5 has no key before '='. Fix: KEY=5 with a key `d2lrun --help` lists."),
        (["+=mlp"], "+=mlp has no key before '='. Fix: model=mlp."),
        (["trainer..epochs=5"], "trainer..epochs=5 has an empty part in its key. "
                                "Fix: trainer.epochs=5."),
        (["-m", "+optim.lr.=0.1,1"], "+optim.lr.=0.1,1 has an empty part in its key. "
                                     "Fix: +optim.lr=0.1,1."),
    ],
)  # fmt: skip
def test_hydras_flags_that_failed_with_a_traceback_are_one_line(args, line):
    from d2lrun.config.flags import check_flags

    with pytest.raises(UsageError) as e:
        check_flags(args)
    assert str(e.value) == line
    check_flags(["--cfg", "job", "--resolve", "-cn", "config"])  # these are fine
    check_flags(["--cfg", "job", "-p", "optim.lr"])
    check_flags(["--cfg", "hydra", "-p", "hydra.launcher"])


@pytest.mark.parametrize("name", ["eval", "predict"])
def test_eval_and_predict_refuse_the_folders_hydra_would_make_for_nothing(name):
    """d2lrun-eval run=R -m left multirun/DATE/TIME/ in the current folder, hydra.run.dir=X an
    empty X/: they read a run and write beside it. And -cn: no preset for them."""
    from d2lrun.config.flags import check_flags

    for args in (["run=R", "-m"], ["run=R", "hydra.run.dir=X"], ["-m", "hydra.sweep.dir=X"]):
        with pytest.raises(UsageError) as e:
            check_flags(args, name)
        made = " ".join(a for a in args if a != "run=R")
        assert str(e.value) == (f"{made}: d2lrun-{name} reads one run and writes beside it, into "
                                f"no folder of its own. Fix: drop {made}.")  # fmt: skip
    with pytest.raises(UsageError) as e:  # said 'a preset is experiment=NAME', which it takes not
        check_flags(["-cn", "config"], name)
    assert str(e.value) == (f"--config-name config: d2lrun-{name} runs its own config "
                            f"({name}.yaml). Fix: drop it.")  # fmt: skip


@pytest.mark.parametrize(
    "override,line",
    [("model=[mlp,lenet]", "model=[mlp,lenet] gives 2 options, and a run takes one. Fix: "
                           "model=mlp, or d2lrun -m model=mlp,lenet for a run each."),
     ("regularizer=[l1,l2]", "regularizer=[l1,l2] gives 2 options, and a run takes one. Fix: "
                             "regularizer=l1, or d2lrun -m regularizer=l1,l2 for a run each."),
     ("optim=[]", "optim=[] gives 0 options, and a run takes one. Fix: optim=sgd.")],
)  # fmt: skip
def test_a_group_given_a_list_is_refused_not_merged(override, line):
    """regularizer=[l1,l2] trained with l2 alone, exit 0; model=[mlp,lenet] said Hydra's 'Merge
    error: LeNet is not a subclass of MLP'."""
    from d2lrun.config import check_groups

    with pytest.raises(UsageError) as e:
        check_groups([override])
    assert str(e.value) == line


def test_eval_and_predict_refuse_a_key_added_with_plus():
    """d2lrun-eval run=R +foo=1 ran, exit 0, as if foo meant something; foo=1 was refused."""
    from d2lrun.config import check_groups

    for name in ("eval", "predict"):
        with pytest.raises(UsageError) as e:
            check_groups(["run=r", "+foo=1"], name)
        assert str(e.value).startswith("foo is not a key of the config (its keys: run, ckpt, ")
        assert str(e.value).endswith(". Fix: drop +foo=1.")


def test_two_overrides_in_one_argument_are_told_apart():
    """d2lrun.train("trainer.epochs=1 trainer.progress=false"): the Fix quoted them as one value,
    which then failed as 'not a whole number'."""
    from hydra.errors import OverrideParseException

    error = OverrideParseException("trainer.epochs=1 trainer.progress=false", "no viable")
    assert str(explain(error)) == (
        "cannot read the override trainer.epochs=1 trainer.progress=false. Fix: one override per "
        "argument: 'trainer.epochs=1' 'trainer.progress=false'."
    )


def test_a_key_without_its_value_is_given_one():
    """d2lrun.train("optim.lr"), or d2lrun seed: 'Fix: write it as KEY=VALUE', with no value."""
    from hydra.errors import OverrideParseException

    fixes = {"optim.lr": "optim.lr=0.03", "seed": "seed=0", "foo": "write it as KEY=VALUE",
             "optim": "write it as KEY=VALUE"}  # fmt: skip
    for key, fix in fixes.items():
        error = OverrideParseException(key, "missing EQUAL")
        assert str(explain(error)) == f"cannot read the override {key}. Fix: {fix}."


def test_hydra_help_with_overrides_is_hydras_help(capsys, monkeypatch):
    """d2lrun --hydra-help trainer.epochs=2: 'trainer is not a key of the config (its keys:
    none)', exit 2; --help KEY=V shows the keys with that value."""
    from d2lrun.cli import train_main

    monkeypatch.setattr(sys, "argv", ["d2lrun", "--hydra-help", "trainer.epochs=2"])
    with contextlib.suppress(SystemExit):
        train_main()
    out = capsys.readouterr()
    assert out.out.startswith("Hydra (") and out.err == ""


@pytest.mark.parametrize(
    ("name", "arg", "fix"),
    [
        ("config", "runs/a", "resume=runs/a"),  # a run's folder, or its .pt file
        ("config", "runs/a/last.pt", "resume=runs/a/last.pt"),
        ("config", "my data.csv", "dataset=csv 'dataset.path=my data.csv'"),  # a table
        ("eval", "runs/a", "run=runs/a"),
        ("eval", "runs/a/BEST.PTH", "ckpt=runs/a/BEST.PTH"),
        ("eval", "my data.csv", "'dataset.path=my data.csv'"),
        ("predict", "runs/a", "run=runs/a"),
        ("predict", "images.npy", "input=images.npy"),
        ("predict", "new.pt", "input=new.pt"),  # a tensor of inputs: no run's checkpoint
        ("eval", "my.yaml", None),  # no table, no run: no key to tell, Hydra's line as before
        ("config", "new.pt", None),
    ],
)
def test_a_path_given_without_its_key_is_told_which_key(tmp_path, monkeypatch, name, arg, fix):
    """d2lrun-eval outputs/DATE/TIME said 'cannot read the override ... Fix: write it as
    KEY=VALUE', leaving the user to find the key: run=, ckpt=, resume=, input= or dataset.path=."""
    from d2lrun.config.flags import check_flags

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    for f in (
        "runs/a/last.pt",
        "runs/a/BEST.PTH",
        "my data.csv",
        "images.npy",
        "new.pt",
        "my.yaml",
    ):
        (tmp_path / f).touch()
    with pytest.raises(Exception) as e:
        check_flags(["trainer.epochs=1", arg], name)
    said = f"{arg} is not an override. Fix: {fix}." if fix else "Fix: write it as KEY=VALUE."
    assert str(explain(e.value)).endswith(said)
    if (
        fix and name == "predict" and arg != "images.npy"
    ):  # a second one: Fixed at once, not after the first's Fix
        with pytest.raises(UsageError) as e:
            check_flags([arg, "images.npy"], name)
        assert str(e.value) == (f"{arg} images.npy are not overrides. Fix: "
                                f"{fix} input=images.npy.")  # fmt: skip
    with pytest.raises(Exception) as e:  # a sweep's: Hydra's error, as before
        check_flags(["-m", "runs/a"], name)
    said = "Fix: drop -m." if name != "config" else "override runs/a. Fix: write it as KEY=VALUE."
    assert str(explain(e.value)).endswith(said)  # (d2lrun-eval evaluates one run)
    # No such run (it said 'Fix: write it as KEY=VALUE'): the nearest there, with its key
    (tmp_path / "runs" / "10-49-40").mkdir()
    key = "resume" if name == "config" else "run"
    for typed, fix in (
        ("runs/10-49-4", f"{key}=runs/10-49-40 (the nearest there), or "),
        ("runs/b", ""),
    ):
        with pytest.raises(UsageError) as e:
            check_flags([typed], name)
        assert str(e.value) == (f"{typed}: no such run folder or checkpoint. Fix: {fix}give a "
                                f"path under outputs/.")  # fmt: skip
