"""Issue 17's model switches: depth recurrence (NUM_LOOPS, PR #1344), parallel residual lanes
(PARALLEL_START_LAYER, PR #1204/#1530) and U-Net skip gates (SKIP_GATES, PR #289). Off = the old
function bit for bit; on = causal, the record's arithmetic, the right layer order, artifact round trip,
the parameter counts, one compiled graph per loop state."""
import math

import pytest
import torch
from modelkit import assert_causal, randomize, small_cfg

from golf.compress.artifact import load_artifact, save_artifact
from golf.compress.quant import quantize_model_
from golf.core.config import GPTConfig, load_config
from golf.core.utils import GolfError, compile_stats
from golf.data.shards import BOS_ID
from golf.model.gpt import GPT, count_params, loop_order
from golf.model.layers import rms_norm
from golf.model.mixer import MixerContext, optim_group_of, quant_group_of

T = 24
LOOP = dict(num_loops=2, loop_start=1, loop_end=2, enable_looping_at=0.5)
LANES = dict(parallel_start_layer=5)
GATES = dict(skip_gates=True)
ALL = dict(num_layers=7, **LOOP, **LANES, **GATES)


def cfg7(**kw):
    return small_cfg(**{"num_layers": 7, **kw})


def old_hidden(m, idx):
    """GPT.hidden as it was before these switches (commit 0792bcb), for the bit-identity check."""
    B, T_ = idx.shape
    x = m.tok_emb(idx)
    if m.bigram is not None:
        x = x + m.bigram(idx)
    x = rms_norm(x)
    if m.smear is not None:
        x = m.smear(x, idx)
    mechs = tuple(m.mechanisms.values())
    for mech in mechs:
        x = mech.prefix(x)
    P = x.shape[1] - T_
    doc_start = idx == BOS_ID
    if P:
        doc_start = torch.cat([doc_start.new_zeros(B, P), doc_start], dim=1)
    cos, sin = m.rotary(P + T_, x.device)
    ctx = MixerContext(cos=cos, sin=sin, num_prefix=P, doc_start=doc_start, mechanisms=mechs)
    x0, skips = x, []
    for i, b in enumerate(m.schedule):
        for mech in mechs:
            x = mech.layer_input(x, i)
        if m.skip_weights is not None and i >= m.num_encoder and skips:
            x = x + m.skip_weights[i - m.num_encoder].to(x.dtype) * skips.pop()
        x = m.blocks[b](x, x0, ctx, 1.0 / math.sqrt(i + 1) if m.ln_scale else 1.0)
        if m.skip_weights is not None and i < m.num_encoder:
            skips.append(x)
    return rms_norm(x[:, P:])


def record_hidden(m, idx):
    """The 2026-04-27 record's _forward_hidden (no smear/bigram/memory tokens), written from its code:
    encoder/decoder halves of the (looped) index list, skips popped into the attention lane through
    lerp(w * skip, lane, sigmoid(gate)), lanes from physical layer K, final lane mean."""
    L = m.num_layers
    x = rms_norm(m.tok_emb(idx))
    cos, sin = m.rotary(idx.shape[1], x.device)
    ctx = MixerContext(cos=cos, sin=sin, doc_start=idx == BOS_ID)
    c = m.cfg
    if m.looping:
        seg = list(range(c.loop_start, c.loop_end + 1))
        ids = list(range(c.loop_start)) + seg * (c.num_loops + 1) + list(range(c.loop_end + 1, L))
    else:
        ids = list(range(L))
    enc, dec = ids[: len(ids) // 2], ids[len(ids) // 2:]
    ln = [1.0 / math.sqrt(i + 1) for i in range(L)]
    x0, skips = x, []
    for i in enc:
        x = m.blocks[i](x, x0, ctx, ln[i])
        skips.append(x)
    psl, lane0, lane1 = c.parallel_start_layer, None, None
    for si, i in enumerate(dec):
        blk = m.blocks[i]
        if psl > 0 and i >= psl:
            if lane0 is None:
                lane0 = lane1 = x
            if si < m.skip_weights.shape[0] and skips:
                w = m.skip_weights[si]
                g = torch.sigmoid(m.skip_gates[si])
                lane0 = torch.lerp(w * skips.pop(), lane0, g)
            mix = blk.resid_mix
            attn = blk.attn_scale * blk.mixer(rms_norm(mix[0] * lane0 + mix[1] * x0) * ln[i], ctx)
            mlp = blk.mlp_scale * blk.mlp(rms_norm(lane1) * ln[i])
            r, p = m.parallel_resid_lambdas[i - psl], m.parallel_post_lambdas[i - psl]
            lane0, lane1 = (r[0] * lane0 + p[0][0] * attn + p[1][0] * mlp,
                            r[1] * lane1 + p[0][1] * attn + p[1][1] * mlp)
        else:
            if si < m.skip_weights.shape[0] and skips:
                x = torch.lerp(m.skip_weights[si] * skips.pop(), x, torch.sigmoid(m.skip_gates[si]))
            x = blk(x, x0, ctx, ln[i])
    if lane0 is not None:
        x = 0.5 * (lane0 + lane1)
    return rms_norm(x)


# ---------------------------------------------------------------------------------------------
# off = today's function


@pytest.mark.parametrize("kw", [
    dict(),
    dict(num_memory_tokens=3, bigram_vocab_size=32, bigram_dim=8, smear_gate=True, persistent_memory=2,
         unique_layers=2, mixers="swa,attn", attn_window=4, num_layers=6),
    dict(unet_skips=False, num_layers=5),
    # the switches' other settings do nothing while their switch is off
    dict(num_layers=7, loop_start=1, loop_end=4, enable_looping_at=0.0, parallel_final_lane="mlp"),
], ids=["plain", "everything_else_on", "no_unet", "settings_without_switch"])
def test_off_is_bit_identical_to_the_old_backbone(kw):
    torch.manual_seed(0)
    m = randomize(GPT(small_cfg(**kw))).eval()
    assert m.loop_order is None and not m.looping and m.parallel_post_lambdas is None and m.skip_gates is None
    assert not any(k.startswith(("parallel_", "skip_gates")) for k in m.state_dict())
    if m.skip_weights is not None:
        assert m.skip_weights.shape[0] == m.num_layers // 2
    assert m.part_params() == {"parallel_lanes": 0, "depth_recurrence": 0, "skip_gates": 0}
    idx = torch.randint(2, 64, (2, 16))
    idx[:, 5] = BOS_ID
    with torch.no_grad():
        assert torch.equal(m.hidden(idx), old_hidden(m, idx))
        assert m.set_training_fraction(1.0) is False  # nothing to loop
        assert torch.equal(m.hidden(idx), old_hidden(m, idx))


# ---------------------------------------------------------------------------------------------
# the record's arithmetic


@pytest.mark.parametrize("kw,frac", [
    (ALL, 1.0), (ALL, 0.0), (dict(num_layers=7, **LANES, **GATES), 1.0), (dict(num_layers=6, **LOOP, **GATES), 1.0),
    (dict(num_layers=6, parallel_start_layer=3, skip_gates=True), 1.0),
])
def test_matches_the_records_forward(kw, frac):
    torch.manual_seed(0)
    m = randomize(GPT(small_cfg(**kw)), std=0.2).eval()
    m.set_training_fraction(frac)
    idx = torch.randint(2, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(m.hidden(idx), record_hidden(m, idx), rtol=1e-5, atol=1e-5)


def test_each_switch_changes_the_function():
    torch.manual_seed(0)
    idx = torch.randint(2, 64, (2, 16))
    outs = {}
    for name, kw in (("off", {}), ("loop", LOOP), ("lanes", LANES), ("gates", GATES)):
        torch.manual_seed(0)
        m = randomize(GPT(cfg7(**kw)), skip=("parallel_post_lambdas", "parallel_resid_lambdas", "skip_gates")).eval()
        with torch.no_grad():
            outs[name] = m(idx)
    for name in ("loop", "lanes", "gates"):
        assert not torch.allclose(outs[name], outs["off"]), name


def test_skip_gates_init_and_limits():
    """Zero init = sigmoid 0.5: x <- (x + w*skip) / 2; a gate of +inf ignores the skip (= no U-Net)."""
    torch.manual_seed(0)
    m = randomize(GPT(cfg7(**GATES)), skip=("skip_gates",)).eval()
    assert m.skip_gates.shape == (3, 32) and torch.count_nonzero(m.skip_gates) == 0
    plain = GPT(cfg7(unet_skips=False)).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("skip_")})
    idx = torch.randint(2, 64, (2, 16))
    with torch.no_grad():
        assert not torch.allclose(m(idx), plain(idx))
        m.skip_gates.fill_(60.0)
        torch.testing.assert_close(m(idx), plain(idx))


def test_lanes_init_and_final_lane_choice():
    torch.manual_seed(0)
    m = GPT(cfg7(**LANES))
    assert m.parallel_post_lambdas.shape == (2, 2, 2) and bool((m.parallel_post_lambdas == 1).all())
    assert m.parallel_resid_lambdas.shape == (2, 2) and torch.allclose(m.parallel_resid_lambdas, torch.tensor(1.1))
    idx = torch.randint(2, 64, (2, 16))
    outs = []
    for lane in ("mean", "attn", "mlp"):
        torch.manual_seed(0)
        m = randomize(GPT(cfg7(**LANES, parallel_final_lane=lane))).eval()
        with torch.no_grad():
            outs.append(m(idx))
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


# ---------------------------------------------------------------------------------------------
# causality


@pytest.mark.parametrize("kw", [dict(num_layers=7, **LOOP), dict(num_layers=7, **LANES), dict(num_layers=7, **GATES),
                                dict(ALL, num_memory_tokens=3, bigram_vocab_size=32, bigram_dim=8, smear_gate=True,
                                     unique_layers=3, persistent_memory=2),
                                dict(num_layers=6, **LOOP, parallel_start_layer=3, unet_skips=False)],
                         ids=["loop", "lanes", "gates", "all_with_everything", "loop_lanes_no_unet"])
@pytest.mark.parametrize("frac", [0.0, 1.0])
def test_causal(kw, frac):
    torch.manual_seed(0)
    m = randomize(GPT(small_cfg(**kw))).eval()
    m.set_training_fraction(frac)
    assert_causal(m, T)


# ---------------------------------------------------------------------------------------------
# the loop


def blocks_that_ran(m, idx):
    ran = []
    hooks = [b.mixer.register_forward_pre_hook(lambda mod, args, j=j: ran.append(j)) for j, b in enumerate(m.blocks)]
    try:
        with torch.no_grad():
            m(idx)
    finally:
        for h in hooks:
            h.remove()
    return ran


def test_loop_runs_the_right_layers_and_switches_at_the_fraction():
    m = GPT(cfg7(**LOOP, **LANES))
    idx = torch.randint(2, 64, (1, 8))
    looped = [0, 1, 2, 1, 2, 1, 2, 3, 4, 5, 6]
    assert m.looping and blocks_that_ran(m, idx) == looped == m.run_order()  # fresh / rebuilt: looped
    assert m.set_training_fraction(0.49) is False
    assert blocks_that_ran(m, idx) == list(range(7)) == m.run_order()
    assert m.set_training_fraction(0.5) is True
    assert blocks_that_ran(m, idx) == looped
    # the record's setting: 11 layers, 3..5 three times
    rec = GPTConfig(num_layers=11, num_loops=2, loop_start=3, loop_end=5)
    assert loop_order(rec) == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]


def test_loop_composes_with_weight_tied_depth():
    """The loop repeats logical layers; weight tying maps them to blocks (and its per-layer embedding
    is the logical layer's, on every pass)."""
    m = GPT(small_cfg(num_layers=6, unique_layers=2, num_loops=1, loop_start=2, loop_end=3))
    assert m.schedule == [0, 1, 0, 1, 0, 1]
    assert m.loop_order == [0, 1, 2, 3, 2, 3, 4, 5]
    assert blocks_that_ran(m, torch.randint(2, 64, (1, 8))) == [0, 1, 0, 1, 0, 1, 0, 1]


def test_looped_blocks_get_gradients_from_every_pass():
    torch.manual_seed(0)
    m = randomize(GPT(cfg7(**ALL)))
    idx = torch.randint(2, 64, (2, 16))
    m(idx, idx).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    m.zero_grad()
    m.set_training_fraction(0.0)  # plain: the looped run's extra skip weights get no gradient
    m(idx, idx).backward()
    assert m.skip_weights.grad[:3].abs().sum() > 0 and m.skip_weights.grad[3:].abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# parameters: counts, tags


def test_parameter_counts():
    D = 32
    base = count_params(GPT(cfg7()))
    for kw, want in ((LOOP, dict(depth_recurrence=2 * D)),  # 11 runs: 5 skips instead of 3
                     (LANES, dict(parallel_lanes=2 * 6)),  # layers 5, 6: post 2x2 + resid 2
                     (GATES, dict(skip_gates=3 * D)),
                     (dict(LOOP, **GATES), dict(depth_recurrence=2 * D, skip_gates=5 * D))):
        m = GPT(cfg7(**kw))
        parts = {k: v for k, v in m.part_params().items() if v}
        assert parts == want, kw
        assert count_params(m) == base + sum(want.values())
    # the record's model (11 x 512, loop 3..5 x3, lanes from 8, gates): 18 + 1,536 + 4,096
    rec = GPT(GPTConfig(num_layers=11, model_dim=512, num_loops=2, loop_start=3, loop_end=5,
                        parallel_start_layer=8, skip_gates=True))
    assert rec.part_params() == {"parallel_lanes": 18, "depth_recurrence": 1536, "skip_gates": 4096}


def test_new_parameters_are_tagged():
    m = GPT(cfg7(**ALL))
    for name in ("parallel_post_lambdas", "parallel_resid_lambdas", "skip_gates", "skip_weights"):
        p = dict(m.named_parameters())[name]
        assert p._golf_quant == "control" and p._golf_optim == "scalar", name
        assert (quant_group_of(p), optim_group_of(p)) == ("control", "scalar")


def test_bad_settings_are_named():
    for kw, match in ((dict(num_loops=1, loop_start=5, loop_end=7), "LOOP_END"),
                      (dict(num_loops=1, loop_start=3, loop_end=2), "LOOP_START"),
                      (dict(num_loops=-1), "NUM_LOOPS"),
                      (dict(num_loops=1, enable_looping_at=1.5), "ENABLE_LOOPING_AT"),
                      (dict(parallel_start_layer=7), "PARALLEL_START_LAYER"),
                      (dict(parallel_start_layer=2), "first half"),
                      (dict(parallel_start_layer=5, num_loops=1, loop_start=4, loop_end=5), "inside the loop"),
                      (dict(parallel_start_layer=5, parallel_final_lane="sum"), "PARALLEL_FINAL_LANE"),
                      (dict(skip_gates=True, unet_skips=False), "SKIP_GATES")):
        with pytest.raises(GolfError, match=match):
            GPT(cfg7(**kw))
    GPT(cfg7(parallel_start_layer=2, unet_skips=False))  # without skips the lanes may start anywhere


def test_env_names_reach_the_model_config():
    h = load_config([], env={"NUM_LOOPS": "2", "LOOP_START": "1", "LOOP_END": "2", "ENABLE_LOOPING_AT": "0.35",
                             "PARALLEL_START_LAYER": "3", "PARALLEL_FINAL_LANE": "mlp", "SKIP_GATES": "1"})
    c = h.model_config()
    assert (c.num_loops, c.loop_start, c.loop_end, c.enable_looping_at) == (2, 1, 2, 0.35)
    assert (c.parallel_start_layer, c.parallel_final_lane, c.skip_gates) == (3, "mlp", True)


# ---------------------------------------------------------------------------------------------
# artifact round trip, compile


def test_export_and_artifact_rebuild_the_looped_model(tmp_path):
    h = load_config([], env={}, preset="tiny", finalize=False)
    for k, v in dict(model_dim=64, num_heads=2, num_kv_heads=1, rope_dims=16, mlp_mult=2,
                     num_memory_tokens=0, bigram_vocab_size=0, train_seq_len=32, eval_stride=32, quant_min_numel=1024,
                     zstd_level=9, **ALL).items():
        setattr(h, k, v)
    h.finalize()
    torch.manual_seed(0)
    model = randomize(GPT(h.model_config()), std=0.05).eval()
    model.set_training_fraction(0.2)  # as mid-training: the export must still rebuild a looped model
    idx = torch.randint(0, h.vocab_size, (2, 32))
    idx[:, 0] = BOS_ID
    rebuilt = GPT(GPTConfig.from_dict(dict(vars(h.model_config()))), with_mtp=False).eval()
    rebuilt.load_state_dict(model.export_state_dict())
    assert rebuilt.looping
    model.set_training_fraction(1.0)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(idx), model(idx), rtol=0, atol=0)
    save_artifact(tmp_path / "model.ptz", model, h, "ab" * 32)
    loaded, meta = load_artifact(tmp_path / "model.ptz")
    assert meta["model_config"]["num_loops"] == 2 and loaded.looping and loaded.run_order() == model.run_order()
    ref = GPT(h.model_config()).eval()
    ref.load_state_dict(model.state_dict())
    quantize_model_(ref, h)
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), ref(idx), rtol=0, atol=0)


def test_compiles_as_one_graph_per_loop_state():
    """fullgraph (no breaks) with all three switches; looping on/off and QAT on/off are four graphs,
    compiled once each, and switching back and forth reuses them."""
    torch._dynamo.reset()
    model = randomize(GPT(cfg7(**ALL)))
    fwd = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 64, (2, 32), generator=g), torch.randint(0, 64, (2, 32), generator=g)
    before = compile_stats()["graphs"]
    for frac, bits in ((1.0, 0), (0.0, 0), (1.0, 6), (0.0, 6), (0.0, 0), (1.0, 0), (1.0, 6)):
        model.set_training_fraction(frac)
        model.set_qat_bits(bits)
        loss = fwd(x, y)
        loss.backward()
        assert torch.isfinite(loss)
    assert compile_stats()["graphs"] - before == 4
    model.set_qat_bits(0)
    for frac in (0.0, 1.0):
        model.set_training_fraction(frac)
        torch.testing.assert_close(fwd(x, y), model(x, y))
    torch._dynamo.reset()


def test_bf16_autocast_forward():
    torch.manual_seed(0)
    m = randomize(GPT(cfg7(**ALL)))
    idx = torch.randint(2, 64, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(idx, idx)
    assert torch.isfinite(loss) and abs(loss.item() - m(idx, idx).item()) < 0.1


def test_record_technique_lines_name_the_switches():
    from golf.submit import records as R

    rec = load_config([], env={}, preset="record").to_dict()
    plain = "\n".join(R.techniques(rec))
    assert "recurrence" not in plain and "lanes" not in plain and "gates" not in plain
    on = dict(num_loops=2, loop_start=3, loop_end=5, parallel_start_layer=8, skip_gates=True)
    t = "\n".join(R.techniques(dict(rec, **on)))
    assert "U-Net skips with learned sigmoid gates (PR #289)" in t
    assert "depth recurrence: layers 3..5 run 3x from 0.35 of training (PR #1344)" in t
    assert "parallel residual lanes from layer 8, final lane mean (PR #1204, #1530)" in t
