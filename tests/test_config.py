"""One config: defaults < file < flags, and one-line errors for what the scripts cannot use."""

import pytest
import yaml

from config import Config, ConfigError, build_config, parse_args, parse_config, save_config


def test_defaults_are_the_recipe_with_the_measured_lr_and_spec_augment():
    cfg = Config()
    assert (cfg.model, cfg.optimizer, cfg.lr, cfg.lr_decay, cfg.batch_size) == ("ecapa_tdnn", "adam", 0.001, 0.97, 64)
    assert (cfg.loss, cfg.scale, cfg.margin, cfg.spec_augment) == ("aam", 30.0, 0.2, True)
    assert (cfg.freq_masks, cfg.time_masks, cfg.spec_augment_prob) == (1, 1, 0.6)
    descent = parse_config(["--config", "recipes/descent.yaml"], "test")  # the recipe as it was: one file away
    changed = {"lr": 0.0005, "freq_masks": 2, "time_masks": 2, "spec_augment_prob": 1.0}
    assert {k: getattr(descent, k) for k in changed} == changed
    assert {k: v for k, v in vars(descent).items() if k not in changed} == {
        k: v for k, v in vars(cfg).items() if k not in changed}


def test_precedence_defaults_file_flags(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("lr: 0.01\nbatch_size: 32\nmodel: resnet18\n")
    cfg = parse_config(["--config", str(path), "--batch-size", "16", "--no-spec-augment"], "test")
    assert cfg.lr == 0.01 and cfg.batch_size == 16 and cfg.model == "resnet18" and cfg.spec_augment is False
    assert cfg.margin == Config().margin


def test_list_flags():
    cfg = parse_config(["--keep", "10", "90", "--test-trials", "a.txt", "b.txt"], "test")
    assert cfg.keep == [10.0, 90.0] and cfg.test_trials == ["a.txt", "b.txt"]


@pytest.mark.parametrize("argv, message", [
    (["--lerning-rate", "0.1"], "unknown flag '--lerning-rate'"),
    (["--margn", "0.1"], "did you mean 'margin'"),
    (["--batch-size", "abc"], "batch_size: cannot use 'abc' as int"),
    (["--model", "resnet99"], "model: 'resnet99' is not one of"),
    (["--lr", "-1"], "lr: must be > 0"),
    (["--label-noise", "1.5"], "label_noise: must be in [0, 1)"),
    (["--spec-augment-prob", "1.5"], "spec_augment_prob: a probability, must be in [0, 1]"),
    (["--aug-prob", "-0.1"], "aug_prob: a probability, must be in [0, 1]"),
    (["--compile", "maybe"], "compile: 'maybe' is not one of"),
    (["--demo-generator", "vocoder"], "demo_generator: 'vocoder' is not one of"),
    (["--action", "move"], "action: 'move' is not one of"),
    (["--cross-folds", "1"], "cross_folds: 0 (off) or the number of folds, at least 2; got 1"),
    (["--cross-folds", "-2"], "cross_folds: must be >= 0"),
])
def test_bad_flags_are_one_line_errors(argv, message):
    with pytest.raises(ConfigError, match=None) as err:
        parse_config(argv, "test")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_file_key_names_closest(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("num_frame: 300\n")
    with pytest.raises(ConfigError, match="unknown config key 'num_frame'; did you mean 'num_frames'"):
        parse_args(["--config", str(path)], "test")


def test_saved_config_round_trips(tmp_path):
    cfg = build_config({"model": "resnet34", "keep": [0, 90], "lr": 0.1})
    save_config(cfg, tmp_path / "config.yaml")
    assert build_config({}, base=yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg


@pytest.mark.parametrize("script, argv, message", [
    ("train.py", ["--calibrate", "x.txt"], "--calibrate: train.py does not use calibrate (a setting of inference.py)"),
    ("train.py", ["--keep", "0", "90"], "--keep: train.py does not use keep (a setting of train_sort.py)"),
    ("train_sort.py", ["--calibrate", "x.txt"], "--calibrate: train_sort.py does not use calibrate (a setting of "
                                                "inference.py)"),
    ("inference.py", ["--epochs", "3"], "--epochs: inference.py does not use epochs (a setting of train.py, "
                                        "train_sort.py)"),
    ("inference.py", ["--lerning-rate", "1"], "unknown flag '--lerning-rate'"),
])
def test_a_flag_outside_the_scripts_scope_is_an_error_naming_the_script(script, argv, message):
    with pytest.raises(ConfigError) as err:
        parse_config(argv, "test", script)
    assert str(err.value).startswith(message)


def test_a_config_file_key_outside_the_scope_is_an_error(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("lr: 0.01\nscore_norm: [asnorm]\n")
    assert parse_config(["--config", str(path)], "test", "train.py").lr == 0.01  # train.py scores its test too
    with pytest.raises(ConfigError, match=r"recipe.yaml: inference.py does not use lr \(a setting of train.py"):
        parse_config(["--config", str(path)], "test", "inference.py")


def test_every_key_belongs_to_a_script_and_model_keys_to_all_three():
    from config import FIELDS, MODEL_KEYS, SCOPES

    assert set().union(*map(set, SCOPES.values())) == set(FIELDS)
    assert all(set(MODEL_KEYS) <= set(keys) for keys in SCOPES.values())


def test_model_keys_must_match_the_checkpoints():
    from config import check_model_keys

    saved = Config()
    check_model_keys({"n_mels": "80", "lr": "1"}, saved, "run")  # the same value, and a non-model key: fine
    with pytest.raises(ConfigError, match=r"^n_mels: run was trained with 80, not 40;"):
        check_model_keys({"n_mels": "40"}, saved, "run")
