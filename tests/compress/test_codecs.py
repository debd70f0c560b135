"""golf/compress/codecs.py: every compressor and layout round-trips an artifact exactly; the fast
L1 row order equals the plain loop; a compressor that is missing is an error before any work."""
import shutil

import numpy as np
import pytest
import torch
from compress.test_artifact import TOK_SHA, _h, _trained_ish

from golf.compress import codecs
from golf.compress.artifact import load_artifact, read_artifact, save_artifact
from golf.core.config import load_config
from golf.core.utils import GolfError


def test_l1_order_matches_the_plain_loop():
    rng = np.random.default_rng(0)
    for rows, cols in ((1, 5), (2, 3), (17, 9), (40, 16)):
        q = rng.integers(-7, 8, (rows, cols)).astype(np.int8)
        q[rows // 2] = q[0]  # an exact tie somewhere
        order = codecs.l1_order(q)
        assert np.array_equal(order, codecs.l1_order_reference(q))
        assert sorted(order.tolist()) == list(range(rows)) and order[0] == 0


@pytest.mark.parametrize("layout", codecs.LAYOUTS)
def test_arrange_restore_round_trip(layout):
    q = np.random.default_rng(1).integers(-31, 32, (33, 20)).astype(np.int8)
    stored, order = codecs.arrange(q, layout)
    assert np.array_equal(codecs.restore(stored.reshape(-1), layout, order, 33), q)


@pytest.mark.parametrize("compressor,layout", [("zstd", "rows"), ("brotli", "sorted_t"), ("lzma", "sorted"),
                                               ("zstd", "sorted_t")])
def test_artifact_round_trips_with_every_serialiser(tmp_path, compressor, layout):
    h = _h(zstd_level=3)
    model = _trained_ish(h)
    save_artifact(tmp_path / "ref.ptz", model, h, TOK_SHA)
    h2 = _h(zstd_level=3, compressor=compressor, quant_layout=layout)
    save_artifact(tmp_path / "x.ptz", model, h2, TOK_SHA)
    header, _ = read_artifact(tmp_path / "x.ptz")
    assert header["compressor"] == compressor
    assert {e.get("layout", "rows") for e in header["tensors"] if e["encoding"] == "q"} == {layout}
    a, _ = load_artifact(tmp_path / "ref.ptz")
    b, _ = load_artifact(tmp_path / "x.ptz")
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n  # the same weights whatever the serialiser


def test_missing_or_unknown_compressor_is_an_error_first(monkeypatch):
    with pytest.raises(GolfError, match="COMPRESSOR='zip'"):
        load_config(env={"COMPRESSOR": "zip"})
    with pytest.raises(GolfError, match="QUANT_LAYOUT"):
        load_config(env={"QUANT_LAYOUT": "cols"})
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GolfError, match="lrzip program, which is not installed"):
        codecs.check_compressor("lrzip")
    with pytest.raises(GolfError, match="could not decompress"):
        codecs.decompress(b"not lzma", "lzma", 10)
