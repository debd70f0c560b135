"""Token-space retrieval probes: the trials of passkey retrieval, multi-query associative recall and
token recall at a distance, built from token ids alone so they run on any vocabulary.

A trial is a prompt (BOS first, ending right before the answer) and the answer the model must
greedy-decode from that prompt alone. Ids 0..3 (pad / BOS / EOS / unk in golf's tokenizers) are
never content. Once per seed the vocabulary is split into disjoint pools (markers, answer
alphabets, filler), so a needle's context occurs exactly once in its prompt and an ideal copier
(the induction oracle in tests/eval/test_probes.py) scores 1.0.

- passkey (needle in a haystack; Mohtashami & Jaggi 2023, "Landmark Attention"): [BOS] haystack with
  `KEY passkey` inserted at a relative depth (0 = right after BOS, 1 = right before the query), then
  `KEY` again -> the passkey's PASSKEY_LEN "digits" (drawn from a 10-id alphabet). The haystack is one
  fixed filler phrase repeated (their "The grass is green..." filler): it carries no information, so
  only the needle must be remembered; filler="random" draws every haystack token instead.
- mqar (multi-query associative recall; Arora et al. 2023, Zoology): [BOS] k1 v1 .. kN vN, random
  filler, then queries q1 a1 q2 a2 ...; one trial per query, its prompt ending at the query key
  (earlier queries keep their answers, as in an MQAR sequence).
- recall: a random span of SPAN_LEN tokens, random filler, then the span's first CUE_LEN tokens d tokens
  after the span began: the model must continue with the rest of the span (an induction-head copy).
Every sequence, answer included, is exactly `context` tokens long.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from golf.core.utils import GolfError
from golf.data.shards import BOS_ID

RESERVED = 4  # ids 0..3: pad, BOS, EOS, unk
PASSKEY_LEN = 5  # answer tokens of a passkey
DIGITS = 10  # the passkey's alphabet, like a number's digits
MARKER_LEN = 2  # the KEY marker
PHRASE_LEN = 16  # the repeated filler phrase
SPAN_LEN = 8  # recall: the span to copy
CUE_LEN = 2  # recall: its first tokens, shown again as the cue
MIN_FILLER = 16  # filler ids a pool split must leave
STREAM = {"passkey": 1, "mqar": 2, "recall": 3}  # independent random streams per probe


@dataclass(frozen=True)
class Trial:
    cell: tuple  # (context, depth | pairs | distance): the heat-map cell it counts in
    prompt: tuple[int, ...]  # BOS first; ends right before the first answer token
    answer: tuple[int, ...]


@dataclass
class ProbeSet:
    name: str
    rows: list[int]  # context lengths
    cols: list  # depths | pair counts | distances
    col_label: str
    trials: list[Trial]
    chance: float  # per answer token, guessing uniformly from the answer alphabet
    settings: dict[str, Any] = field(default_factory=dict)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)])


def split_vocab(vocab: int, sizes: dict[str, int], seed: int, probe: str) -> dict[str, list[int]]:
    """Disjoint id pools (sizes in order), the rest as filler; the same split for the same seed."""
    need = RESERVED + sum(sizes.values()) + MIN_FILLER
    if vocab < need:
        raise GolfError(f"probe {probe}: a vocabulary of {vocab} ids is too small; it needs at least {need} "
                        f"({', '.join(f'{k} {v}' for k, v in sizes.items())}, {MIN_FILLER} filler)"
                        + (" - ask for fewer --pairs" if probe == "mqar" else ""))
    ids = _rng(seed, STREAM[probe]).permutation(np.arange(RESERVED, vocab)).tolist()
    out, i = {}, 0
    for name, n in sizes.items():
        out[name], i = ids[i:i + n], i + n
    out["filler"] = ids[i:]
    return out


def passkey(vocab: int, contexts: Sequence[int], depths: Sequence[float], trials: int, seed: int,
            filler: str = "repeat") -> ProbeSet:
    if filler not in ("repeat", "random"):
        raise GolfError(f"passkey filler={filler!r}: use repeat (a fixed phrase repeated) or random")
    pools = split_vocab(vocab, {"marker": MARKER_LEN, "digits": DIGITS}, seed, "passkey")
    marker = pools["marker"]
    phrase = _rng(seed, STREAM["passkey"], 0).choice(pools["filler"], PHRASE_LEN).tolist()
    out = []
    for ctx in contexts:
        hay_len = ctx - 1 - 2 * MARKER_LEN - 2 * PASSKEY_LEN  # the prompt is ctx - PASSKEY_LEN tokens
        if hay_len < 0:
            raise GolfError(f"--contexts {ctx}: passkey retrieval needs contexts of at least "
                            f"{1 + 2 * MARKER_LEN + 2 * PASSKEY_LEN} tokens")
        for di, depth in enumerate(depths):
            for t in range(trials):
                r = _rng(seed, STREAM["passkey"], ctx, di, t + 1)
                key = r.choice(pools["digits"], PASSKEY_LEN).tolist()
                hay = (phrase * (hay_len // PHRASE_LEN + 1))[:hay_len] if filler == "repeat" \
                    else r.choice(pools["filler"], hay_len).tolist()
                at = int(round(depth * hay_len))
                prompt = [BOS_ID] + hay[:at] + marker + key + hay[at:] + marker
                out.append(Trial((ctx, depth), tuple(prompt), tuple(key)))
    return ProbeSet("passkey", list(contexts), list(depths), "needle depth (0 = start, 1 = end)", out,
                    1.0 / DIGITS, {"filler": filler, "passkey_len": PASSKEY_LEN, "digits": DIGITS,
                                   "marker_len": MARKER_LEN, "phrase_len": PHRASE_LEN})


def mqar(vocab: int, contexts: Sequence[int], pairs: Sequence[int], trials: int, seed: int,
         queries: int = 4) -> ProbeSet:
    if queries < 1:
        raise GolfError(f"mqar queries={queries} must be >= 1")
    pool = max(max(pairs), (vocab - RESERVED) // 4)  # Zoology keeps keys and values apart too
    pools = split_vocab(vocab, {"keys": pool, "values": pool}, seed, "mqar")
    out = []
    for ctx in contexts:
        for pi, n in enumerate(pairs):
            q = min(queries, n)
            gap = ctx - 1 - 2 * n - 2 * q
            if gap < 0:
                continue  # does not fit: an empty cell
            for t in range(trials):
                r = _rng(seed, STREAM["mqar"], ctx, pi, t + 1)
                keys = r.choice(pools["keys"], n, replace=False).tolist()
                vals = r.choice(pools["values"], n, replace=False).tolist()
                seq = [BOS_ID] + [x for kv in zip(keys, vals) for x in kv] + r.choice(pools["filler"], gap).tolist()
                for j in r.choice(n, q, replace=False).tolist():
                    seq.append(keys[j])
                    out.append(Trial((ctx, n), tuple(seq), (vals[j],)))
                    seq.append(vals[j])
    return ProbeSet("mqar", list(contexts), list(pairs), "key-value pairs", out, 1.0 / pool,
                    {"queries": queries, "key_pool": pool, "value_pool": pool})


def recall(vocab: int, contexts: Sequence[int], distances: Sequence[int], trials: int, seed: int) -> ProbeSet:
    bad = [d for d in distances if d < SPAN_LEN]
    if bad:
        raise GolfError(f"--distances {bad}: a distance must be at least the span length {SPAN_LEN} "
                        "(the span ends before its copy begins)")
    pool = max(SPAN_LEN, (vocab - RESERVED) // 4)
    pools = split_vocab(vocab, {"span": pool}, seed, "recall")
    out = []
    for ctx in contexts:
        for di, d in enumerate(distances):
            start = ctx - d - SPAN_LEN  # where the span begins; its copy ends at the last position
            if start < 1:
                continue  # does not fit
            for t in range(trials):
                r = _rng(seed, STREAM["recall"], ctx, di, t + 1)
                span = r.choice(pools["span"], SPAN_LEN, replace=False).tolist()
                fill = r.choice(pools["filler"], start - 1 + d - SPAN_LEN).tolist()
                prompt = [BOS_ID] + fill[:start - 1] + span + fill[start - 1:] + span[:CUE_LEN]
                out.append(Trial((ctx, d), tuple(prompt), tuple(span[CUE_LEN:])))
    return ProbeSet("recall", list(contexts), list(distances), "distance (tokens)", out, 1.0 / pool,
                    {"span_len": SPAN_LEN, "cue_len": CUE_LEN, "span_pool": pool})


def default_distances(contexts: Sequence[int]) -> list[int]:
    """16, 64, 256, ... while a copy at that distance fits the longest context."""
    out, d = [], 16
    while d <= max(contexts) - SPAN_LEN - 1:
        out.append(d)
        d *= 4
    return out or [SPAN_LEN]
