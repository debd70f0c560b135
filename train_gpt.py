"""Train, export and score a golf model in one process: `python train_gpt.py [--setting value ...]`
or `torchrun --nproc_per_node=N train_gpt.py ...`. Settings: golf/core/config.py (env names work too,
e.g. NUM_LAYERS=10 python train_gpt.py). Writes runs/<RUN_ID>/{train.log, ckpt.pt, final.pt,
metrics.json, model.ptz, size.json, eval.json} and prints the artifact's round-trip val_bpb."""
import sys

from golf.core.utils import main_guard


@main_guard
def main() -> None:
    from golf.core.config import load_config
    from golf.train.run import run

    h = load_config(sys.argv[1:])
    summary = run(h)
    if summary.get("status") == "interrupted":
        raise SystemExit(143)  # stopped by a signal after writing ckpt.pt: resume with RESUME=1


if __name__ == "__main__":
    main()
