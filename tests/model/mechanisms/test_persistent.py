import torch
from modelkit import randomize as _randomize
from modelkit import small_cfg as _small_cfg

from golf.model.attention import attend_slots
from golf.model.gpt import GPT, count_params
from golf.model.mixer import optim_group_of, quant_group_of


def small_cfg(**kw):
    return _small_cfg(**{"num_layers": 2, "train_seq_len": 16, **kw})


def test_persistent_memory_params_and_tags():
    m = GPT(small_cfg(persistent_memory=6))
    pm = m.mechanisms["persistent_memory"]
    assert pm.keys.shape == (2, 2, 6, 8) and pm.values.shape == (2, 2, 6, 8)
    assert count_params(m) == count_params(GPT(small_cfg())) + 2 * (2 * 2 * 6 * 8) + 2 * 4
    assert quant_group_of(pm.keys) == "control" and optim_group_of(pm.keys) == "memory"
    assert torch.count_nonzero(pm.scale) == 0


def test_persistent_memory_starts_as_exact_noop_then_learns():
    torch.manual_seed(0)
    m = GPT(small_cfg(persistent_memory=6))
    _randomize(m, skip={"mechanisms.persistent_memory.scale"})
    idx = torch.randint(2, 64, (2, 16))
    base = GPT(small_cfg())
    base.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("mechanisms.")})
    torch.testing.assert_close(m(idx), base(idx))  # zero residual scale: identical to no memory
    m(idx, idx).backward()
    assert m.mechanisms["persistent_memory"].scale.grad.abs().sum() > 0
    with torch.no_grad():
        m.mechanisms["persistent_memory"].scale.fill_(1.0)
    assert not torch.allclose(m(idx), base(idx))


def test_attend_slots_matches_naive_loop():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 5, 8)
    k, v = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    out = attend_slots(q, k, v)
    ref = torch.empty_like(out)
    for h in range(4):
        kv = h // 2  # GQA: query head h reads kv head h // (H / Hkv)
        att = torch.softmax(q[:, h] @ k[kv].T / 8 ** 0.5, dim=-1)
        ref[:, h] = att @ v[kv]
    torch.testing.assert_close(out, ref)
