import math

import pytest
import torch
import torch.nn.functional as F
from modelkit import randomize, small_cfg

from golf.compress.quant import quant_plan
from golf.core.config import Hyperparameters, load_config
from golf.core.utils import GolfError, compile_stats
from golf.model.gpt import GPT, count_params, layer_mixers
from golf.model.layers import CastedLinear, QATEmbedding
from golf.model.mixer import OPTIM_GROUPS, QUANT_GROUPS, optim_group_of, quant_group_of
from golf.model.quantgrid import quantize_dequantize


def test_fresh_model_is_near_uniform():
    torch.manual_seed(0)
    m = GPT(small_cfg())
    idx = torch.randint(0, 64, (2, 16))
    logp = torch.log_softmax(m(idx), dim=-1)
    # zero-init output projections + small tied embeddings: every prediction is close to uniform
    assert (logp + math.log(64)).abs().max() < 0.25


def test_forward_shapes_and_reductions():
    torch.manual_seed(0)
    m = randomize(GPT(small_cfg(num_memory_tokens=3, bigram_vocab_size=32, bigram_dim=8, smear_gate=True)))
    m.eval()
    idx = torch.randint(0, 64, (2, 16))
    tgt = torch.randint(0, 64, (2, 16))
    assert m(idx).shape == (2, 16, 64)
    per_tok = m(idx, tgt, reduction="none")
    assert per_tok.shape == (2, 16)
    torch.testing.assert_close(per_tok.mean(), m(idx, tgt))
    logits = m(idx)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), tgt.reshape(-1), reduction="none")
    torch.testing.assert_close(per_tok.reshape(-1), ref)
    # the softcap bounds the logits
    assert logits.abs().max() <= 30.0


def test_last_positions_only_equal_the_full_forward_sliced():
    """forward(..., last=k) (the evaluator scores only a window's last stride tokens) computes the
    head and loss for those positions alone; the values are the full forward's, sliced."""
    torch.manual_seed(0)
    m = randomize(GPT(small_cfg(num_memory_tokens=2, bigram_vocab_size=32, bigram_dim=8, smear_gate=True))).eval()
    idx, tgt = torch.randint(2, 64, (2, 16)), torch.randint(2, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(m(idx, tgt, reduction="none", last=5), m(idx, tgt, reduction="none")[:, -5:])
        torch.testing.assert_close(m(idx, last=3), m(idx)[:, -3:])


def test_mtp_aux_loss_training_only_and_not_exported():
    torch.manual_seed(0)
    cfg = small_cfg(mtp_num_heads=2, mtp_loss_weight=0.5, mtp_decay=0.5)
    m = randomize(GPT(cfg))
    idx = torch.randint(0, 64, (2, 16))
    tgt = torch.randint(0, 64, (2, 16))
    m.eval()
    eval_loss = m(idx, tgt)
    m.train()
    train_loss = m(idx, tgt)
    # aux by hand: head k predicts targets[t + k]
    x = m.hidden(idx)
    aux = sum(w * torch.nn.functional.cross_entropy(
        m.logits_from_hidden(x[:, : 16 - k], m.mtp_heads[k - 1]).reshape(-1, 64), tgt[:, k:].reshape(-1))
        for k, w in zip((1, 2), (0.5, 0.25)))
    torch.testing.assert_close(train_loss, eval_loss + aux)
    assert m(idx, tgt, reduction="none").shape == (2, 16)  # no aux in per-token mode
    sd = m.export_state_dict()
    assert not any(k.startswith("mtp_heads") for k in sd)
    assert any(k.startswith("mtp_heads") for k in m.state_dict())
    # the artifact loader's way: no MTP heads, strict load of the export
    m2 = GPT(cfg, with_mtp=False)
    m2.load_state_dict(sd)
    m2.eval()
    torch.testing.assert_close(m2(idx), m(idx) if not m.training else m.eval()(idx))
    assert count_params(m) == count_params(m2) < count_params(m, exported_only=False)


def test_every_parameter_is_tagged_sensibly():
    cfg = small_cfg(num_memory_tokens=2, bigram_vocab_size=32, bigram_dim=8, smear_gate=True, mtp_num_heads=1,
                    persistent_memory=3, unique_layers=2, tie_embeddings=False)
    m = GPT(cfg)
    groups = {}
    for name, p in m.named_parameters():
        q, o = quant_group_of(p), optim_group_of(p)
        assert q in QUANT_GROUPS and o in OPTIM_GROUPS
        groups[name] = (q, o)
        if p.ndim >= 3:  # Muon only sees true matrices
            assert o != "matrix", name
    assert groups["tok_emb.weight"] == ("embed", "embed")
    assert groups["lm_head.weight"] == ("embed", "embed")
    assert groups["blocks.0.mlp.fc.weight"] == ("mlp", "matrix")
    assert groups["blocks.1.mixer.c_q.weight"] == ("attn", "matrix")
    assert groups["blocks.1.mixer.proj.weight"] == ("attn", "matrix")
    assert groups["blocks.0.mixer.q_gain"] == ("control", "scalar")
    assert groups["mechanisms.memory_tokens.tokens"] == ("control", "memory")  # no weight decay
    assert groups["mechanisms.persistent_memory.keys"] == ("control", "memory")
    assert groups["bigram.table.weight"] == ("other", "embed")
    assert groups["smear.gate"] == ("control", "scalar")


def test_preset_parameter_counts():
    counts = {p: count_params(GPT(load_config([], env={}, preset=p).model_config())) for p in ("tiny", "baseline", "record")}
    print("param counts:", counts)
    assert counts["baseline"] == 17_059_912  # the challenge baseline's model_params
    assert 25.4e6 < counts["record"] < 25.9e6  # public memory-tokens record: ~25.8M
    assert counts["tiny"] < 2e6
    # the April frontier: with its SP8192 vocabulary, the 1.0611 record's logged model_params (35,945,671)
    # to within its gate/lane scalars
    frontier = count_params(GPT(load_config([], env={"VOCAB_SIZE": "8192"}, preset="frontier").model_config()))
    assert abs(frontier - 35_945_671) < 1000


def test_set_qat_bits_plan_and_scalar():
    m = GPT(small_cfg())
    n = m.set_qat_bits({"blocks.0.mlp.fc.weight": 5, "blocks.1.mixer.c_q.weight": 6, "blocks.2.mlp.fc.weight": 16})
    assert n == 2
    assert m.blocks[0].mlp.fc.qat_bits == 5 and m.blocks[1].mixer.c_q.qat_bits == 6
    assert m.blocks[2].mlp.fc.qat_bits == 0  # 16 = kept in fp16, no fake quantisation
    lins = [mod for mod in m.modules() if isinstance(mod, (CastedLinear, QATEmbedding))]
    assert m.set_qat_bits(6) == len(lins)
    assert m.set_qat_bits(0) == 0


def test_qat_reaches_the_embedding_tables():
    """The token embedding (input and tied head) and the BigramHash table are exported as integers,
    so late QAT fake-quantises them on the same grid (golf issue 16); the gradient still reaches them."""
    torch.manual_seed(0)
    cfg = small_cfg(bigram_vocab_size=64, bigram_dim=16)
    m = randomize(GPT(cfg), std=0.3)
    plan = quant_plan(m, Hyperparameters(quant_min_numel=0))
    assert plan["tok_emb.weight"] == 8 and plan["bigram.table.weight"] == 6
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        before = m(idx)
    assert m.set_qat_bits({"tok_emb.weight": 4, "bigram.table.weight": 4}, 12.0) == 2
    with torch.no_grad():
        x = m.hidden(idx)
        want = F.linear(x, quantize_dequantize(m.tok_emb.weight, 4, 12.0))
        torch.testing.assert_close(m.logits_from_hidden(x), 30.0 * torch.tanh(want / 30.0))
        e = m.bigram.table(m.bigram.keys(idx))
        torch.testing.assert_close(e, F.embedding(m.bigram.keys(idx), quantize_dequantize(m.bigram.table.weight, 4, 12.0)))
        assert not torch.allclose(m(idx), before)
    m(idx, idx).backward()
    assert m.tok_emb.weight.grad.abs().sum() > 0 and m.bigram.table.weight.grad.abs().sum() > 0
    m.set_qat_bits(0)
    with torch.no_grad():
        torch.testing.assert_close(m(idx), before)


def test_qat_uses_the_exporters_clip_ratios():
    torch.manual_seed(0)
    m = randomize(GPT(small_cfg()), std=0.3)
    fc = m.blocks[0].mlp.fc
    x = torch.randn(3, fc.in_features)
    for ratios in [(1.0,), (0.8, 1.0)]:
        m.set_qat_bits({"blocks.0.mlp.fc.weight": 5}, ratios)
        want = x @ quantize_dequantize(fc.weight.detach(), 5, ratios).t()
        torch.testing.assert_close(fc(x), want)
    m.set_qat_bits(0)  # switching QAT off keeps the ratios for the next switch-on
    assert fc.qat_ratios == (0.8, 1.0) and fc.qat_bits == 0


def test_qat_with_real_quant_plan_trains():
    torch.manual_seed(0)
    h = Hyperparameters()
    cfg = small_cfg()
    m = randomize(GPT(cfg))
    plan = quant_plan(m, h)
    m.set_qat_bits(plan)
    idx = torch.randint(0, 64, (2, 16))
    loss = m(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and m.blocks[0].mlp.fc.weight.grad is not None


def test_layer_mixers_patterns():
    assert layer_mixers(small_cfg(mixers="")) == ["attn"] * 4
    assert layer_mixers(small_cfg(num_layers=8, mixers="swa_pattern", global_every=4)) == ["swa"] * 3 + ["attn"] + ["swa"] * 3 + ["attn"]
    assert layer_mixers(small_cfg(num_layers=8, mixers="swa,attn")) == ["swa", "attn"] * 4
    assert layer_mixers(small_cfg(mixers="attn,swa,swa,attn")) == ["attn", "swa", "swa", "attn"]
    with pytest.raises(GolfError, match="MIXERS"):
        layer_mixers(small_cfg(mixers="attn,swa,attn"))
    with pytest.raises(GolfError, match="unknown mixer"):
        GPT(small_cfg(mixers="atn"))


def test_unet_and_ln_scale_switches_change_the_function():
    torch.manual_seed(0)
    idx = torch.randint(2, 64, (1, 12))
    outs = []
    for kw in (dict(), dict(unet_skips=False), dict(ln_scale=False)):
        torch.manual_seed(0)
        m = randomize(GPT(small_cfg(**kw)))
        if not kw:
            assert m.skip_weights.shape == (2, 32)
        outs.append(m(idx))
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])


def test_gradients_reach_every_exported_parameter():
    torch.manual_seed(0)
    cfg = small_cfg(num_memory_tokens=2, bigram_vocab_size=32, bigram_dim=8, smear_gate=True,
                    persistent_memory=2, unique_layers=2, mixers="swa,attn", attn_window=4)
    m = randomize(GPT(cfg))
    idx = torch.randint(2, 64, (2, 16))
    m(idx, idx).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_forward():
    torch.manual_seed(0)
    m = randomize(GPT(small_cfg(num_memory_tokens=2)))
    idx = torch.randint(2, 64, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(idx, idx)
    assert torch.isfinite(loss)
    assert abs(loss.item() - m(idx, idx).item()) < 0.1


@pytest.mark.parametrize("mixers", ["swa,attn", "stream,deltanet", "hypermix,attn"])
def test_every_parameter_learns_from_the_real_init(mixers):
    # zero-initialised pairs (e.g. a zero table behind a zero projection) get no gradient ever;
    # `randomize` above would hide that, so start from GPT's own init and take a few Adam steps.
    torch.manual_seed(0)
    cfg = small_cfg(num_memory_tokens=2, bigram_vocab_size=32, bigram_dim=8, smear_gate=True,
                    persistent_memory=2 if "attn" in mixers else 0,  # it lives in attention layers
                    unique_layers=2, mixers=mixers, attn_window=4)
    m = GPT(cfg)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(3):
        idx = torch.randint(2, 64, (2, 16))
        opt.zero_grad()
        m(idx, idx).backward()
        opt.step()
    frozen = [n for n, p in m.named_parameters() if torch.equal(p.detach(), before[n])]
    assert frozen == []


@pytest.mark.parametrize("extra", [
    # every per-layer mixer at once, with every record-stack part and persistent memory
    dict(num_layers=5, mixers="attn,swa,stream,deltanet,hypermix", persistent_memory=4, attn_window=8),
    dict(num_layers=4, unique_layers=2),  # weight-tied depth
    dict(xsa_last_n=4, sparse_attn_gate_enabled=True, gate_window=8, mlp_leaky_slope=0.5, rope_yarn=True),
], ids=["all_mixers", "weight_tied", "frontier_attention"])
def test_compiles_as_one_graph_and_qat_switch_reuses_it(extra):
    """On CUDA the trainer runs torch.compile(model): a graph break splits the step into slower
    pieces, and a recompile inside the timed loop eats budget. dynamo's eager backend traces exactly
    what inductor would see, so this catches both on CPU in seconds: fullgraph=True fails on any
    break, and QAT on/off (compiled both during warm-up) must be two graphs, then no more."""
    torch._dynamo.reset()
    cfg = small_cfg(num_memory_tokens=4, bigram_vocab_size=128, bigram_dim=16, smear_gate=True, mtp_num_heads=2,
                    **extra)
    model = randomize(GPT(cfg))
    fwd = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 64, (2, 32), generator=g), torch.randint(0, 64, (2, 32), generator=g)
    before = compile_stats()["graphs"]
    for bits in (0, 6, 0, 6):  # warm-up compiles both variants; the later switches reuse them
        model.set_qat_bits(bits)
        loss = fwd(x, y)
        loss.backward()
        assert torch.isfinite(loss)
    assert compile_stats()["graphs"] - before == 2
    model.set_qat_bits(0)
    model.zero_grad()
    torch.testing.assert_close(fwd(x, y), model(x, y))  # the traced graph is the same function
    torch._dynamo.reset()
