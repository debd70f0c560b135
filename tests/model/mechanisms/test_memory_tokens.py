import torch
from modelkit import randomize as _randomize
from modelkit import small_cfg as _small_cfg

from golf.model.gpt import GPT, count_params
from golf.model.mixer import optim_group_of, quant_group_of


def small_cfg(**kw):
    return _small_cfg(**{"num_layers": 2, "train_seq_len": 16, **kw})


def test_memory_tokens_prefix_params_and_tags():
    m = GPT(small_cfg(num_memory_tokens=5))
    assert m.num_prefix == 5
    mem = m.mechanisms["memory_tokens"].tokens
    assert mem.shape == (5, 32)
    assert quant_group_of(mem) == "control" and optim_group_of(mem) == "memory"  # fp16, no weight decay
    assert count_params(m) == count_params(GPT(small_cfg())) + 5 * 32
    assert GPT(small_cfg()).num_prefix == 0 and "memory_tokens" not in GPT(small_cfg()).mechanisms


def test_memory_tokens_have_no_loss_and_are_read_by_every_position():
    torch.manual_seed(0)
    m = _randomize(GPT(small_cfg(num_memory_tokens=4))).eval()
    idx = torch.randint(2, 64, (2, 16))
    logits = m(idx)
    assert logits.shape == (2, 16, 64)  # prefix positions are not returned
    hidden = m.hidden(idx)
    assert hidden.shape == (2, 16, 32)
    # the loss covers exactly the real tokens
    tgt = torch.randint(0, 64, (2, 16))
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), tgt.reshape(-1))
    torch.testing.assert_close(m(idx, tgt), ref)
    # every real position (position 0 included) sees the memory through the causal mask
    with torch.no_grad():
        m.mechanisms["memory_tokens"].tokens.add_(1.0)
    changed = (m(idx) - logits).abs().amax(dim=-1)
    assert (changed > 1e-4).all()


def test_memory_tokens_learn():
    torch.manual_seed(0)
    m = _randomize(GPT(small_cfg(num_memory_tokens=4))).train()
    idx = torch.randint(2, 64, (2, 16))
    m(idx, torch.roll(idx, -1, 1)).backward()
    g = m.mechanisms["memory_tokens"].tokens.grad
    assert g is not None and (g.abs().sum(dim=-1) > 0).all()
