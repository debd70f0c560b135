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


def test_doc_packing_needs_doc_attention_and_is_the_frontiers():
    """DOC_PACKING=1 without DOC_ATTENTION=1 is refused at config load, naming both and the fix."""
    with pytest.raises(GolfError, match=r"DOC_PACKING=1 needs DOC_ATTENTION=1.*set DOC_ATTENTION=1, or DOC_PACKING=0"):
        load_config([], {"DOC_PACKING": "1"})
    with pytest.raises(GolfError, match="DOC_ATTENTION=1"):
        load_config(["--preset", "frontier", "--doc-attention", "0"], {})
    assert load_config([], {"DOC_PACKING": "1", "DOC_ATTENTION": "1"}).doc_packing == 1
    assert [load_config([], {}, preset=p).doc_packing for p in PRESETS] == [p == "frontier" for p in PRESETS]


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


# Every setting the challenge's baseline train_gpt.py reads (openai/parameter-golf, os.environ.get).
CHALLENGE_BASELINE = (
    "DATA_PATH", "TOKENIZER_PATH", "RUN_ID", "SEED", "VAL_BATCH_SIZE", "VAL_LOSS_EVERY", "TRAIN_LOG_EVERY",
    "ITERATIONS", "WARMDOWN_ITERS", "WARMUP_STEPS", "TRAIN_BATCH_TOKENS", "TRAIN_SEQ_LEN", "MAX_WALLCLOCK_SECONDS",
    "QK_GAIN_INIT", "VOCAB_SIZE", "NUM_LAYERS", "NUM_KV_HEADS", "MODEL_DIM", "NUM_HEADS", "MLP_MULT",
    "TIE_EMBEDDINGS", "ROPE_BASE", "LOGIT_SOFTCAP", "EMBED_LR", "HEAD_LR", "TIED_EMBED_LR", "TIED_EMBED_INIT_STD",
    "MATRIX_LR", "SCALAR_LR", "MUON_MOMENTUM", "MUON_BACKEND_STEPS", "MUON_MOMENTUM_WARMUP_START",
    "MUON_MOMENTUM_WARMUP_STEPS", "BETA1", "BETA2", "ADAM_EPS", "GRAD_CLIP_NORM", "CONTROL_TENSOR_NAME_PATTERNS",
    "INT8_KEEP_FLOAT_FP32_NAME_PATTERNS",
)


@pytest.mark.parametrize("name", CHALLENGE_BASELINE)
def test_every_challenge_setting_is_honoured_or_refused_never_ignored(name):
    from golf.core.config import CHALLENGE_NAMES, CHALLENGE_REFUSED, FIELD_TYPES, _coerce

    value = {"DATA_PATH": "d", "TOKENIZER_PATH": "t.model", "RUN_ID": "r", "TIE_EMBEDDINGS": "0"}.get(name, "7")
    if name in CHALLENGE_REFUSED:
        with pytest.raises(GolfError, match=f"{name} is the challenge baseline's setting; golf's is [A-Z_]+"):
            load_config(env={name: value})
        return
    key = CHALLENGE_NAMES.get(name, name.lower())
    assert key in FIELD_TYPES, f"{name} is neither a golf setting nor mapped nor refused"
    h = load_config(env={name: value}, finalize=False)  # its value reaches golf's setting
    assert getattr(h, key) == _coerce(key, value, "test") != getattr(load_config(env={}, finalize=False), key)


def test_challenge_names_map_onto_golf_and_disagreement_is_an_error():
    h = load_config(env={"VAL_LOSS_EVERY": "100", "WARMUP_STEPS": "3", "TRAIN_LOG_EVERY": "50",
                         "VAL_BATCH_SIZE": "32768", "TIED_EMBED_LR": "0.07", "TIED_EMBED_INIT_STD": "0.01"})
    assert (h.val_every, h.compile_warmup_steps, h.log_every, h.val_batch_tokens, h.embed_lr) == (100, 3, 50, 32768, 0.07)
    assert h.model_config().tied_embed_init_std == 0.01
    assert load_config(env={"VAL_LOSS_EVERY": "100", "VAL_EVERY": "100"}).val_every == 100
    with pytest.raises(GolfError, match="VAL_LOSS_EVERY=100 .* VAL_EVERY=5 disagree"):
        load_config(env={"VAL_LOSS_EVERY": "100", "VAL_EVERY": "5"})
    with pytest.raises(GolfError, match="WARMDOWN_FRAC"):
        load_config(env={"WARMDOWN_ITERS": "1200"})
    with pytest.raises(GolfError, match="VAL_LOSS_EVERY.*not a valid int"):
        load_config(env={"VAL_LOSS_EVERY": "often"})


@pytest.mark.parametrize("env,name", [
    ({"NUM_HEADS": "0"}, "NUM_HEADS"), ({"NUM_LAYERS": "0"}, "NUM_LAYERS"), ({"TRAIN_BATCH_TOKENS": "0"}, "TRAIN_BATCH_TOKENS"),
    ({"MLP_MULT": "0"}, "MLP_MULT"), ({"MODEL_DIM": "0"}, "MODEL_DIM"), ({"TRAIN_SEQ_LEN": "0"}, "TRAIN_SEQ_LEN"),
    ({"TRAIN_SEQ_LEN": "-1"}, "TRAIN_SEQ_LEN"), ({"VOCAB_SIZE": "70000"}, "VOCAB_SIZE"), ({"BETA2": "1"}, "BETA2"),
    ({"WARMDOWN_FRAC": "1.5"}, "WARMDOWN_FRAC"), ({"QUANT_MLP_BITS": "9"}, "QUANT_MLP_BITS"),
    ({"QUANT_EMBED_BITS": "0"}, "QUANT_EMBED_BITS"), ({"ZSTD_LEVEL": "0"}, "ZSTD_LEVEL"), ({"EVAL_STRIDE": "0"}, "EVAL_STRIDE"),
    ({"BIGRAM_VOCAB_SIZE": "1"}, "BIGRAM_VOCAB_SIZE"), ({"ADAM_EPS": "0"}, "ADAM_EPS"),
    ({"DOC_PACKING": "2", "DOC_ATTENTION": "1"}, "DOC_PACKING"),
])
def test_out_of_range_settings_are_named_before_anything_is_derived(env, name):
    with pytest.raises(GolfError, match=f"^{name}=.* out of range"):
        load_config(env=env)


@pytest.mark.parametrize("typo,meant", [("MAX_WALLCLOCK", "MAX_WALLCLOCK_SECONDS"), ("MODELDIM", "MODEL_DIM"),
                                        ("NUM_LAYRES", "NUM_LAYERS"), ("MATRIXLR", "MATRIX_LR"),
                                        ("WARMDOWNFRAC", "WARMDOWN_FRAC")])
def test_misspelled_environment_settings_are_refused_with_the_close_name(typo, meant):
    with pytest.raises(GolfError, match=f"unknown setting {typo}; did you mean .*{meant}"):
        load_config(env={typo: "20"})


def test_unrelated_and_makefile_variables_pass():
    import re

    from golf.core.utils import repo_root

    make_vars = re.findall(r"^([A-Z_]+) \?=", (repo_root() / "Makefile").read_text(), re.M)
    assert "SEEDS" in make_vars and "TOKENIZER" in make_vars
    env = {v: "1" for v in make_vars if v not in ("PRESET", "VOCAB_SIZE")}
    env.update(PATH="/bin", HOME="/root", OMP_NUM_THREADS="2", CUDA_VISIBLE_DEVICES="0", PYTHONPATH="x",
               LD_LIBRARY_PATH="x", HF_TOKEN="x", NCCL_DEBUG="INFO", TORCHINDUCTOR_CACHE_DIR="x", CHECKPOINT="x",
               TOKENIZERS_PARALLELISM="false", MAKEFLAGS="", CI="true", GOLF_SHARED_DATA="x", LOCAL_RANK="0")
    load_config(env=env)  # none of them is taken for a misspelled setting
