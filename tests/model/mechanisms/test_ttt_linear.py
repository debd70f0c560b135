"""TTT-Linear: dual form (mini-batch, chunked) vs token-by-token recurrence in values and gradients,
the core against a literal mini-batch gradient-descent loop with autograd's inner gradients,
causality, parameter count and tags, prefill-then-step, bad settings; with DOC_ATTENTION document
resets at hostile places (dual vs recurrent, each document as alone, isolation, prefill-then-step)."""
from dataclasses import replace

import pytest
import torch
from modelkit import grads_of, live_mixer

from golf.core.config import GPTConfig, Hyperparameters
from golf.core.utils import GolfError
from golf.model.mechanisms.ttt_linear import TTTLinear, inner_ln, ttt_linear_dual
from golf.model.mixer import MixerContext, document_ids, optim_group_of, quant_group_of

CFG = GPTConfig(model_dim=32, num_heads=4, ttt_linear_heads=2, ttt_linear_chunk=16)


def make(seed=0, **over):
    return live_mixer("ttt_linear", replace(CFG, **over), seed)


@pytest.mark.parametrize("chunk,T,heads", [(16, 37, 2), (5, 23, 4), (64, 20, 1), (1, 6, 2), (8, 64, 2)])
def test_dual_form_matches_recurrent(chunk, T, heads):
    m = make(chunk, ttt_linear_chunk=chunk, ttt_linear_heads=heads)
    with torch.no_grad():  # a live inner LayerNorm, so its parameters' gradients are checked too
        m.ln_weight.add_(torch.randn_like(m.ln_weight) * 0.3)
        m.ln_bias.add_(torch.randn_like(m.ln_bias) * 0.3)
        m.b0.add_(torch.randn_like(m.b0) * 0.1)
    x = torch.randn(2, T, 32, requires_grad=True)
    y, y_ref = m(x, MixerContext()), m.forward_recurrent(x, MixerContext())
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for g, g_ref in zip(grads_of(m, x, y), grads_of(m, x, y_ref)):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def _docs_ctx(T, bos, prefix=0):
    """MixerContext with DOC_ATTENTION document ids: BOS at the given positions of each row."""
    mask = torch.zeros(len(bos), T - prefix, dtype=torch.bool)
    for row, ts in enumerate(bos):
        mask[row, list(ts)] = True
    return MixerContext(num_prefix=prefix, doc_ids=document_ids(mask, prefix))


# chunk 5: BOS at 0; at a mini-batch's last position (4: [0..4]); at a mini-batch's first (9: the document
# from 4 runs [4..8], [9..13]) and at a fixed-grid chunk's first (10, 15); consecutive (7, 8); two in one
# mini-batch (12, 14); at the last position (22); a row with none (it starts mid-document)
HOSTILE = [(0, 4, 9, 15), (7, 8, 10, 12, 14, 22), ()]


@pytest.mark.parametrize("chunk,prefix", [(5, 0), (5, 2), (4, 0), (1, 0), (16, 0)])
def test_dual_form_matches_recurrent_with_document_resets(chunk, prefix):
    """DOC_ATTENTION: the fast weights restart from W0, b0 at every document's first position (and a
    fresh mini-batch starts there); the dual form equals the step-by-step form with those restarts."""
    m = make(chunk, ttt_linear_chunk=chunk)
    with torch.no_grad():
        m.ln_weight.add_(torch.randn_like(m.ln_weight) * 0.3)
        m.b0.add_(torch.randn_like(m.b0) * 0.1)
    T = 23 + prefix
    ctx = _docs_ctx(T, HOSTILE, prefix)
    x = torch.randn(3, T, 32, requires_grad=True)
    y, y_ref = m(x, ctx), m.forward_recurrent(x, ctx)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for g, g_ref in zip(grads_of(m, x, y), grads_of(m, x, y_ref)):  # fp32 rounding (fp64: ~1e-12 apart)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=5e-5)
    # every document is what it is alone (the row's first segment too: a document fragment)
    for row, bos in enumerate(HOSTILE):
        cuts = sorted({0, prefix, *(prefix + t for t in bos), T})
        for a, b in zip(cuts, cuts[1:]):
            alone = m(x[row:row + 1, a:b], MixerContext())
            torch.testing.assert_close(y[row:row + 1, a:b], alone, rtol=1e-4, atol=1e-5)


def test_documents_change_nothing_in_later_documents():
    """Changing the tokens before a BOS changes no output (nor gradient) from the BOS on."""
    m = make(4, ttt_linear_chunk=4)
    ctx = _docs_ctx(20, [(6,), (13,)])
    x = torch.randn(2, 20, 32)
    y = m(x, ctx)
    x2 = x.clone()
    x2[0, :6] += torch.randn(6, 32) * 3
    x2[1, :13] += torch.randn(13, 32) * 3
    y2 = m(x2, ctx)
    assert torch.equal(y2[0, 6:], y[0, 6:]) and torch.equal(y2[1, 13:], y[1, 13:])
    assert not torch.allclose(y2[0, :6], y[0, :6])


def test_prefill_with_documents_then_step():
    """Generation: a prefill over documents leaves each row at its own place in its mini-batch (a count
    per row); stepping on gives the full forward's outputs."""
    m = make(5, ttt_linear_chunk=4)
    T = 19
    ctx = _docs_ctx(T + 5, [(3, 9), (11,), (0, 15)])
    x = torch.randn(3, T + 5, 32)
    y = m(x, ctx)
    y_pre, state = m.forward_with_state(x[:, :T], _docs_ctx(T, [(3, 9), (11,), (0, 15)]))
    assert state[-1].tolist() == [2, 0, 0]  # 10 tokens since BOS at 9 (2 into the third mini-batch); 8; 4
    torch.testing.assert_close(y_pre, y[:, :T])
    for t in range(T, T + 5):
        y_t, state = m.step(x[:, t], state)
        torch.testing.assert_close(y_t, y[:, t], rtol=1e-4, atol=1e-5)


def test_core_is_minibatch_gradient_descent_on_the_reconstruction_loss():
    """The paper's primal form, literally: each mini-batch takes autograd's gradients of
    l_s = 1/2 ||k_s + LN(k_s W + b) - v_s||^2 at its start weights; token t (i-th of its mini-batch)
    reads z_t = q_t W_t + b_t with W_t = W_0 - (1/i) sum_{s<=t} eta_s grad l_s."""
    torch.manual_seed(0)
    B, H, T, hd, C = 2, 3, 13, 4, 5
    q, k, v = torch.randn(B, H, T, hd), torch.randn(B, H, T, hd), torch.randn(B, H, T, hd)
    eta = torch.rand(B, H, T) * 0.3
    W0, b0 = torch.randn(H, hd, hd) * 0.3, torch.randn(H, hd) * 0.1
    lw, lb = 1 + torch.randn(H, hd) * 0.2, torch.randn(H, hd) * 0.2
    z, state = ttt_linear_dual(q, k, v, eta, W0, b0, lw, lb, C)
    W, b = W0[None].expand(B, -1, -1, -1).clone(), b0[None].expand(B, -1, -1).clone()
    for start in range(0, T, C):
        Wp, bp = W.clone().requires_grad_(), b.clone().requires_grad_()
        sW, sb = torch.zeros_like(W), torch.zeros_like(b)
        for i, t in enumerate(range(start, min(start + C, T)), start=1):
            f = k[:, :, t] + inner_ln(torch.einsum("bhk,bhkv->bhv", k[:, :, t], Wp) + bp, lw, lb)
            loss = 0.5 * (f - v[:, :, t]).square().sum()
            gW, gb = torch.autograd.grad(loss, (Wp, bp))  # rows (b, h) are independent: per-row gradients
            sW, sb = sW + eta[:, :, t, None, None] * gW, sb + eta[:, :, t, None] * gb
            Wt, bt = W - sW / i, b - sb / i
            want = torch.einsum("bhk,bhkv->bhv", q[:, :, t], Wt) + bt
            torch.testing.assert_close(z[:, :, t], want, rtol=1e-4, atol=1e-5)
        W, b = Wt, bt
    # T = 13 ends inside the third mini-batch (3 of 5 tokens): the state holds its start and partial sums
    W_s, b_s, GW, Gb, n = state
    assert n == 3
    torch.testing.assert_close(W_s - GW / n, Wt, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b_s - Gb / n, bt, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T", [32, 35])
def test_prefill_on_and_off_minibatch_ends_then_step(T):
    """Prefill ending exactly on a mini-batch end (16, 32) and inside one, then step."""
    m = make(3, ttt_linear_chunk=8)
    x = torch.randn(2, T + 6, 32)
    y = m(x, MixerContext())
    for cut in (8, 16, 13, T):
        y_pre, state = m.forward_with_state(x[:, :cut], MixerContext())
        torch.testing.assert_close(y_pre, y[:, :cut])
        for t in range(cut, cut + 6):
            y_t, state = m.step(x[:, t], state)
            torch.testing.assert_close(y_t, y[:, t], rtol=1e-4, atol=1e-5)


def test_causal_inside_and_across_minibatches():
    m = make(1, ttt_linear_chunk=8)
    x = torch.randn(2, 30, 32)
    y = m(x, MixerContext())
    for t in (0, 3, 7, 8, 12, 28):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:]) * 3
        y2 = m(x2, MixerContext())
        torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-6)
        assert (y2[:, t + 1:] - y[:, t + 1:]).abs().max() > 1e-3


def test_inner_lr_zero_reads_only_the_start_weights():
    """TTT_LINEAR_LR=0: nothing is learned at test time, so every token reads f(q_t; W0, b0) alone."""
    m = make(2, ttt_linear_lr=0.0)
    x = torch.randn(1, 20, 32)
    y = m(x, MixerContext())
    for t in (0, 9, 19):
        torch.testing.assert_close(m(x[:, t:t + 1], MixerContext())[:, 0], y[:, t], rtol=1e-5, atol=1e-6)


def test_parameter_tags_and_count():
    D, H = 512, 8
    m = TTTLinear(replace(CFG, model_dim=D, num_heads=H, ttt_linear_heads=0), 0)
    assert m.num_heads == H and m.chunk == 16  # TTT_LINEAR_HEADS=0 -> NUM_HEADS
    hd = D // H
    big = {"qkv_proj.weight", "gate_proj.weight", "out_proj.weight"}
    for name, p in m.named_parameters():
        want = ("attn", "matrix") if name in big else ("control", "scalar")
        assert (quant_group_of(p), optim_group_of(p)) == want, name
    assert sum(p.numel() for p in m.parameters()) == 5 * D * D + H * D + H * hd * hd + 3 * H * hd
    assert torch.count_nonzero(m(torch.randn(1, 5, D), MixerContext())) == 0  # fresh layer: identity block


@pytest.mark.parametrize("over,name", [(dict(ttt_linear_heads=5), "TTT_LINEAR_HEADS"),
                                       (dict(ttt_linear_chunk=0), "TTT_LINEAR_CHUNK"),
                                       (dict(ttt_linear_lr=-1.0), "TTT_LINEAR_LR")])
def test_bad_settings_are_clear_errors(over, name):
    with pytest.raises(GolfError, match=name):
        TTTLinear(replace(CFG, **over), 0)


@pytest.mark.parametrize("over,name", [(dict(ttt_linear_chunk=0), "TTT_LINEAR_CHUNK"),
                                       (dict(ttt_linear_lr=-0.5), "TTT_LINEAR_LR"),
                                       (dict(ttt_linear_heads=-1), "TTT_LINEAR_HEADS")])
def test_bad_settings_are_refused_by_the_config(over, name):
    h = Hyperparameters(**over)
    with pytest.raises(GolfError, match=name):
        h.finalize()
