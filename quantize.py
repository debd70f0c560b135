"""Turn a trained checkpoint into the submission artifact, or check an artifact against the byte cap.

    python quantize.py --checkpoint runs/<id>/final.pt [--out runs/<id>/model.ptz] [--packing int8|bits|auto]
    python quantize.py --check ARTIFACT [--code FILE]          (= make check-size ARTIFACT=...)

Writes the artifact and runs/<id>/size.json (bytes_total = artifact + code, per-group breakdown).
Code bytes are those of the single-file train_gpt.py (built on the fly unless --code is given).
Exits 1 when bytes_total is over the 16,000,000-byte cap."""
import argparse
import json
import sys

from golf.core.utils import GolfError, main_guard


@main_guard
def main() -> None:
    from golf.compress.export import check_size, format_size, quantize_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--checkpoint", help="runs/<id>/final.pt written by train_gpt.py")
    mode.add_argument("--check", metavar="ARTIFACT", help="print bytes_total of an existing artifact")
    ap.add_argument("--out", help="artifact path (default: model.ptz next to the checkpoint)")
    ap.add_argument("--code", help="the submitted code file (default: the bundle, generated now)")
    ap.add_argument("--packing", default="int8", choices=["int8", "bits", "auto"],
                    help="integer layout (golf/compress/pack.py; int8 byte containers compress best in our measurements)")
    ap.add_argument("--data-path", help="QUANT_SCHEME=gptq: the data folder whose training split calibrates "
                                         "(default: the checkpoint's DATA_PATH)")
    ap.add_argument("--json", action="store_true", help="print the size report as JSON")
    a = ap.parse_args()
    if a.check is not None and not a.check.strip():
        raise GolfError("no artifact to check: make check-size ARTIFACT=runs/<id>/model.ptz")
    if a.checkpoint is not None and not a.checkpoint.strip():
        raise GolfError("no checkpoint: python quantize.py --checkpoint runs/<id>/final.pt")
    if a.check:
        size = check_size(a.check, a.code)
    else:
        size = quantize_checkpoint(a.checkpoint, a.out, a.packing, a.code, a.data_path)
        print(f"wrote {size['artifact']} and size.json beside it")
    print(json.dumps(size, indent=2) if a.json else format_size(size))
    if not size["fits"]:
        print(f"error: bytes_total {size['bytes_total']:,} is over the {size['cap']:,}-byte cap", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
