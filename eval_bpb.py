"""Evaluate a submission artifact: sliding-window bits-per-byte on a data folder's val split.

    python eval_bpb.py --artifact runs/<id>/model.ptz --data-path data/datasets/shakespeare_sp1024 \
        [--seq-len 2048 --stride 64 --batch-windows 64 --contexts 512,1024,2048 --max-tokens N \
         --out runs/<id>/eval.json --plot runs/<id>/bpb_vs_position.png --device auto]
    torchrun --nproc_per_node=8 eval_bpb.py --artifact ... --data-path ...   (windows split over ranks)
    TTT_CHUNK_SIZE=48 python eval_bpb.py --artifact ... --data-path ... --ttt lora   (score-first TTT, any of sgd|lora|phased)
    python eval_bpb.py --audit-bytes --tokenizer data/.../tokenizer.model --text FILE [--max-docs N] [--data-path DIR]

Settings left out come from the artifact's own config (EVAL_SEQ_LEN, EVAL_STRIDE, EVAL_BATCH_WINDOWS,
EVAL_CONTEXTS). The training checkpoint is never read: what is scored is what is submitted.
"""
from __future__ import annotations

import argparse
import os
import sys

from golf.core.utils import GolfError, main_guard


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eval_bpb.py", description=__doc__.split("\n")[0])
    p.add_argument("--artifact", help="the quantised artifact (quantize.py --out)")
    p.add_argument("--data-path", default=os.environ.get("DATA_PATH", ""), help="prepared data folder (manifest.json, *_val_*.bin)")
    p.add_argument("--seq-len", type=int, default=0, help="window length (default: the artifact's EVAL_SEQ_LEN)")
    p.add_argument("--stride", type=int, default=0, help="tokens scored per window after the first (default: EVAL_STRIDE)")
    p.add_argument("--batch-windows", type=int, default=0, help="windows per forward (default: EVAL_BATCH_WINDOWS)")
    p.add_argument("--contexts", default=None, help="extra context lengths, e.g. 512,1024,2048 ('' = none; default: EVAL_CONTEXTS)")
    p.add_argument("--context-stride", type=int, default=0, help="stride for the context report (0 = non-overlapping windows)")
    p.add_argument("--max-tokens", type=int, default=0, help="evaluate only this prefix of the val split (0 = all)")
    p.add_argument("--out", default="", help="write the JSON report here")
    p.add_argument("--plot", default="", help="write the BPB-vs-position PNG here")
    p.add_argument("--tokenizer-path", default=os.environ.get("TOKENIZER_PATH", ""),
                   help="the tokenizer (default: the data folder's own, or the challenge layout's data/tokenizers/)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="torch.compile (auto: on for CUDA)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--ttt", default=os.environ.get("TTT", ""), choices=("", "sgd", "lora", "phased"),
                   help="score with test-time training (golf/eval/ttt.py; default: TTT); its TTT_* / GLOBAL_TTT_* / "
                        "PHASED_TTT_* settings come from the environment")
    p.add_argument("--audit-bytes", action="store_true", help="check LUT byte counts against decoded UTF-8 bytes")
    p.add_argument("--tokenizer", default="", help="(audit) tokenizer.model / tokenizer.json")
    p.add_argument("--text", default="", help="(audit) .jsonl[.zst|.gz] with a text field, or a plain .txt file")
    p.add_argument("--text-field", default="text", help="(audit) JSON field holding the text")
    p.add_argument("--max-docs", type=int, default=500, help="(audit) documents to check (0 = all)")
    p.add_argument("--caseops", choices=("auto", "on", "off"), default="auto",
                   help="(audit) CaseOps text (auto: when the tokenizer reserves its operators)")
    return p.parse_args(argv)


def audit(args: argparse.Namespace) -> int:
    from golf.data.audit import audit_file

    if not args.tokenizer or not args.text:
        raise GolfError("--audit-bytes needs --tokenizer PATH and --text FILE")
    if not os.path.exists(args.text):
        raise GolfError(f"--text {args.text}: no such file; give a .jsonl[.zst|.gz] or .txt file of documents")
    caseops = None if args.caseops == "auto" else args.caseops == "on"
    res = audit_file(args.tokenizer, args.text, max_docs=args.max_docs, text_field=args.text_field,
                     caseops=caseops, data_path=args.data_path)  # raises on a mismatch
    print(f"docs:{res['docs']} tokens:{res['tokens']} lut_bytes:{res['lut_bytes']} "
          f"decoded_bytes:{res['decoded_bytes']} text_bytes:{res['text_bytes']} sidecar_bytes:{res['sidecar_bytes']} "
          f"tokenizer:{res['tokenizer_kind']} caseops:{res['caseops']} ok:{res['ok']}")
    return 0


@main_guard
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.audit_bytes:
        raise SystemExit(audit(args))
    if not args.artifact:
        raise GolfError("--artifact PATH is required (the .ptz written by quantize.py)")
    if not args.data_path:
        raise GolfError("--data-path DIR is required (or set DATA_PATH), e.g. data/datasets/shakespeare_sp1024")
    from golf.core.dist import setup, teardown
    from golf.eval.report import plot_bpb_vs_position, summary, write_report
    from golf.eval.score import score

    strategy = None
    if args.ttt:
        from golf.core.config import check_ranges, load_config
        from golf.eval.ttt import FromSettings

        # ranges checked now; the checks against the window once the artifact's EVAL_SEQ_LEN is known
        h = load_config(env={**os.environ, "TTT": args.ttt}, finalize=False)
        check_ranges(h)
        strategy = FromSettings(h)
    d = setup(args.device, "--device")
    rank, world = d.rank, d.world_size
    try:
        rep = score(
            args.artifact, args.data_path, seq_len=args.seq_len, stride=args.stride,
            batch_windows=args.batch_windows, contexts=args.contexts, context_stride=args.context_stride,
            max_tokens=args.max_tokens, device=args.device,
            compile=None if args.compile == "auto" else args.compile == "on",
            rank=rank, world_size=world, progress=args.progress and sys.stderr.isatty(),
            tokenizer_path=args.tokenizer_path, strategy=strategy,
        )
        if rank == 0:
            print(summary(rep))
            if args.out:
                write_report(args.out, rep)
                print(f"wrote {args.out}")
            if args.plot and plot_bpb_vs_position(rep, args.plot):
                print(f"wrote {args.plot}")
    finally:
        teardown(d)


if __name__ == "__main__":
    main()
