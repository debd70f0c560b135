"""Retrieval probes (golf.eval.probes, probe_tasks, probe_run): an ideal copier scores 1.0 and a
wrong one 0, a model never sees an answer before predicting it, an untrained model is near chance,
the layouts are the ones documented, bad settings are refused, the CLI writes JSON + heat maps."""
import json

import pytest
import torch
from torch import nn

from golf.compress import artifact
from golf.core.config import Hyperparameters
from golf.core.utils import GolfError
from golf.data.shards import BOS_ID
from golf.data.tokenizer import ByteTokenizer
from golf.eval import probe_tasks as T
from golf.eval import probes as PR
from golf.eval.probe_run import cell_table, run_trials
from golf.model.gpt import GPT

VOCAB = 64
GRID = dict(contexts=[32, 64], depths=[0.0, 0.5, 1.0], pairs=[4, 8], distances=[8, 16], trials=3, seed=5)


def sets(**over):
    g = {**GRID, **over}
    return PR.build(VOCAB, g["contexts"], g["depths"], g["pairs"], g["distances"], g["trials"], g["seed"])


class Copier(nn.Module):
    """An induction oracle with the model's forward interface (idx [B, T] -> logits [B, T, V]): at the
    last position it predicts the token that followed the longest earlier match of the context's
    suffix (the most recent on ties). shift=1 copies the token after that one instead: a wrong copier."""

    def __init__(self, vocab=VOCAB, shift=0):
        super().__init__()
        self.vocab, self.shift = vocab, shift
        self.w = nn.Parameter(torch.zeros(1))  # a device for sample()

    def forward(self, idx, targets=None):
        B, L = idx.shape
        logits = torch.zeros(B, L, self.vocab)
        for b, row in enumerate(idx.tolist()):
            best, pick = 0, 0
            for j in range(1, L):
                n = 0
                while n < j and row[j - 1 - n] == row[L - 1 - n]:
                    n += 1
                if n and n >= best:
                    best, pick = n, row[min(j + self.shift, L - 1)]
            logits[b, -1, pick] = 1.0
        return logits


class Peeker(nn.Module):
    """Non-causal: position t 'predicts' the token at t+1. Teacher forcing would hand it every answer."""

    def __init__(self, vocab=VOCAB):
        super().__init__()
        self.vocab, self.w = vocab, nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        nxt = torch.cat([idx[:, 1:], torch.zeros_like(idx[:, :1])], dim=1)
        return nn.functional.one_hot(nxt, self.vocab).float()


class Spy(Peeker):
    """Records every input row and always predicts id 0 (never an answer)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, idx, targets=None):
        self.seen += [tuple(r) for r in idx.tolist()]
        return nn.functional.one_hot(torch.zeros_like(idx), self.vocab).float()


def accuracy(model, ps):
    return cell_table(ps, run_trials(model, ps.trials))


def test_an_ideal_copier_scores_one_and_a_wrong_one_zero():
    for ps in sets():
        good, bad = accuracy(Copier(), ps), accuracy(Copier(shift=1), ps)
        assert good["cells"] and all(c["accuracy"] == 1.0 for c in good["cells"]), ps.name
        assert bad["mean_accuracy"] < 0.2, ps.name


def test_the_model_never_sees_an_answer_before_predicting_it():
    for ps in sets():
        assert accuracy(Peeker(), ps)["mean_accuracy"] == 0.0, ps.name  # no teacher forcing
        spy = Spy()
        run_trials(spy, ps.trials)
        allowed = {t.prompt + (0,) * i for t in ps.trials for i in range(len(t.answer))}
        assert spy.seen and set(spy.seen) <= allowed, ps.name  # the prompt, then its own outputs only
        ends = {}
        for t in ps.trials:
            ends[t.cell] = max(ends.get(t.cell, 0), len(t.prompt) + len(t.answer))
        assert all(end == cell[0] for cell, end in ends.items())  # a cell's sequences fill its context


def test_layouts_are_as_documented():
    pk, mq, rc = sets()
    marker = pk.trials[0].prompt[-T.MARKER_LEN:]
    for t in pk.trials:
        p = t.prompt
        assert p[0] == BOS_ID and p[-T.MARKER_LEN:] == marker and min(p[1:]) >= T.RESERVED
        at = [i for i in range(len(p) - T.MARKER_LEN) if p[i:i + T.MARKER_LEN] == marker]
        assert len(at) == 1 and p[at[0] + T.MARKER_LEN:at[0] + T.MARKER_LEN + T.PASSKEY_LEN] == t.answer
        hay = len(p) - 1 - 2 * T.MARKER_LEN - T.PASSKEY_LEN
        assert at[0] - 1 == round(t.cell[1] * hay)  # depth 0: right after BOS; 1: right before the query
    hay_ids = set().union(*(set(t.prompt[1:]) - set(marker) - set(t.answer) for t in pk.trials))
    assert len(hay_ids) <= T.PHRASE_LEN  # one phrase repeated: the same few filler ids in every trial
    for t in mq.trials:
        key = t.prompt[-1]
        i = t.prompt.index(key)
        assert i % 2 == 1 and t.prompt[i + 1] == t.answer[0] and i < 1 + 2 * t.cell[1]  # the pair k v
    assert sum(1 for t in mq.trials if t.cell == (32, 8)) == 3 * 4  # trials x queries
    for t in rc.trials:
        cue = t.prompt[-T.CUE_LEN:]
        start = t.prompt.index(cue[0])
        assert len(t.prompt) - T.CUE_LEN - start == t.cell[1]  # the copy starts d tokens after the span
        assert t.prompt[start + T.CUE_LEN:start + T.SPAN_LEN] == t.answer
    assert [t.prompt for t in sets()[0].trials] == [t.prompt for t in pk.trials]  # deterministic
    assert [t.prompt for t in sets(seed=6)[0].trials] != [t.prompt for t in pk.trials]
    rnd = T.passkey(VOCAB, [64], [0.5], 2, 5, filler="random")
    assert rnd.trials[0].prompt != pk.trials[0].prompt and rnd.settings["filler"] == "random"


def test_cells_that_do_not_fit_are_empty():
    _, mq, rc = sets(contexts=[24, 64])
    tab = accuracy(Copier(), mq)
    assert tab["accuracy"][0][1] is None and tab["accuracy"][1][1] == 1.0  # 8 pairs + 4 queries > 24 tokens
    tab = accuracy(Copier(), rc)
    assert tab["accuracy"][0] == [1.0, None]  # distance 16 + span 8 does not fit 24


def test_an_untrained_model_is_near_chance():
    h = Hyperparameters(vocab_size=VOCAB, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2,
                        num_memory_tokens=0, bigram_vocab_size=0, mtp_num_heads=0, train_seq_len=32)
    torch.manual_seed(0)
    model = GPT(h.model_config(), with_mtp=False)
    for ps in sets(trials=6):
        tab = accuracy(model, ps)
        toks = [c["token_accuracy"] for c in tab["cells"]]
        assert sum(toks) / len(toks) < 3 * ps.chance + 0.1, ps.name
        assert tab == accuracy(model, ps)  # deterministic


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(GolfError, match="at least 15 tokens"):
        sets(contexts=[10, 64])
    with pytest.raises(GolfError, match="span length"):
        sets(distances=[4])
    with pytest.raises(GolfError, match="too small"):
        PR.build(30, [64], [0.5], [4], [8], 1, 1)
    with pytest.raises(GolfError, match="fewer --pairs"):
        PR.build(VOCAB, [64], [0.5], [40], [8], 1, 1)
    with pytest.raises(GolfError, match="--trials"):
        sets(trials=0)
    with pytest.raises(GolfError, match="--depths"):
        PR.parse_list("0,1.5", "--depths", float, 0.0, 1.0)
    with pytest.raises(GolfError, match="--artifact"):
        PR.probe_artifact(tmp_path / "nope.ptz", tmp_path / "out")
    with pytest.raises(GolfError, match="--depths"):
        PR.probe_artifact(tmp_path / "nope.ptz", tmp_path / "out", depths="2")  # settings before the file


def test_cli_writes_json_and_heat_maps_from_an_artifact(tmp_path, monkeypatch, capsys):
    h = Hyperparameters(vocab_size=260, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2,
                        num_memory_tokens=0, bigram_vocab_size=0, mtp_num_heads=0, train_seq_len=32)
    torch.manual_seed(0)
    art = tmp_path / "model.ptz"
    artifact.save_artifact(art, GPT(h.model_config(), with_mtp=False), h, ByteTokenizer().sha256)
    argv = ["--artifact", str(art), "--contexts", "32,64", "--depths", "0,1", "--pairs", "2,4", "--trials", "2"]
    assert PR.main(argv + ["--out", str(tmp_path / "a")]) == 0
    for name in PR.PROBES:
        rec = json.loads((tmp_path / "a" / f"{name}.json").read_text())
        assert rec["probe"] == name and rec["rows"] == [32, 64] and rec["vocab_size"] == 260
        assert len(rec["accuracy"]) == 2 and 0 < rec["chance_token"] < 1
        assert (tmp_path / "a" / f"{name}.png").stat().st_size > 0
    assert json.loads((tmp_path / "a" / "passkey.json").read_text())["settings"]["filler"] == "repeat"

    def no_matplotlib(*a, **k):
        raise ImportError("matplotlib")

    monkeypatch.setattr(PR.plots, "heatmap", no_matplotlib)
    assert PR.main(argv + ["--out", str(tmp_path / "b"), "--probes", "recall"]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out and not (tmp_path / "b" / "recall.png").exists()
    same = [json.loads((tmp_path / d / "recall.json").read_text())["accuracy"] for d in ("a", "b")]
    assert same[0] == same[1]  # deterministic for a seed
