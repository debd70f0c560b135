"""golf/core/config.py: precedence, typing, typo detection, derived values."""
from dataclasses import asdict

import pytest

from golf.core.config import PRESETS, GPTConfig, Hyperparameters, from_dict, load_config, parse_cli
from golf.core.utils import GolfError


def test_precedence_defaults_preset_env_cli():
    h = load_config([], {})
    assert h.preset == "tiny" and h.num_layers == PRESETS["tiny"]["num_layers"]
    h = load_config([], {"PRESET": "record"})
    assert h.num_layers == 10 and h.num_memory_tokens == 64
    h = load_config([], {"PRESET": "record", "NUM_LAYERS": "11"})
    assert h.num_layers == 11
    h = load_config(["--num-layers", "12"], {"PRESET": "record", "NUM_LAYERS": "11"})
    assert h.num_layers == 12


def test_types_are_coerced_and_checked():
    h = load_config(["--smear-gate", "--mlp-mult=2.5", "--seed", "7"], {"EMA": "0"})
    assert h.smear_gate is True and h.mlp_mult == 2.5 and h.seed == 7 and h.ema is False
    with pytest.raises(GolfError, match="NUM_LAYERS='ten' is not a valid int"):
        load_config([], {"NUM_LAYERS": "ten"})


@pytest.mark.parametrize(
    "argv,env,hint",
    [
        (["--num-layer", "3"], {}, "NUM_LAYERS"),
        ([], {"MATRIX_LRR": "0.1"}, "MATRIX_LR"),
        ([], {"PRESET": "recrod"}, "record"),
    ],
)
def test_typos_are_errors_with_close_names(argv, env, hint):
    with pytest.raises(GolfError) as e:
        load_config(argv, env)
    assert hint in str(e.value)


def test_unrelated_environment_is_ignored():
    h = load_config([], {"PATH": "/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "WORLD_SIZE": "2"})
    assert h.num_layers == PRESETS["tiny"]["num_layers"]


def test_derived_values_and_consistency_checks():
    h = load_config([], {"TRAIN_SEQ_LEN": "128", "EVAL_STRIDE": "64"})
    assert h.eval_seq_len == 128 and h.run_id.startswith("tiny_") and h.run_id.endswith("_s1337")
    with pytest.raises(GolfError, match="NUM_HEADS"):
        load_config([], {"MODEL_DIM": "100", "NUM_HEADS": "3"})
    assert load_config([], {"TRAIN_SEQ_LEN": "64"}).eval_stride == 64  # derived length clamps the stride
    with pytest.raises(GolfError, match="EVAL_STRIDE"):
        load_config([], {"TRAIN_SEQ_LEN": "64", "EVAL_SEQ_LEN": "64", "EVAL_STRIDE": "128"})
    with pytest.raises(GolfError, match="MIXERS lists 2 layers but NUM_LAYERS=3"):
        load_config([], {"NUM_LAYERS": "3", "MIXERS": "attn,attn"})


def test_round_trip_through_dict_and_model_subset():
    h = load_config([], {"PRESET": "record"})
    h2 = from_dict(h.to_dict())
    assert h2 == h
    cfg = h.model_config()
    assert isinstance(cfg, GPTConfig) and cfg.num_memory_tokens == 64 and cfg.mtp_loss_weight == 0.2
    assert GPTConfig.from_dict(asdict(cfg)) == cfg
    assert GPTConfig.from_dict({"num_layers": "3"}).num_layers == 3  # an older artifact: the rest default
    with pytest.raises(GolfError, match="unknown model settings"):
        GPTConfig.from_dict({**asdict(cfg), "num_layerz": 3})
    with pytest.raises(GolfError, match="unknown setting"):
        from_dict({"num_layerz": 3})


def test_bare_bool_flag_and_missing_value():
    assert parse_cli(["--qat", "--seed", "3"]) == {"qat": True, "seed": 3}
    with pytest.raises(GolfError, match="needs a value"):
        parse_cli(["--seed"])
    with pytest.raises(GolfError, match="unexpected argument"):
        parse_cli(["seed=3"])


def test_every_field_has_a_supported_type():
    for name, value in Hyperparameters().to_dict().items():
        assert isinstance(value, (int, float, bool, str)), name
