"""Data-parallel training of one method under ``torchrun`` (DDP); rank 0 evaluates and writes.

    python3 -m torch.distributed.run --nproc_per_node=2 experiments/train_ddp.py --method cigl --out runs/ddp
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        experiments/train_ddp.py --dataset cifar10 --method cigl --device cuda --out runs/ddp

``--batch-size`` is the GLOBAL batch (split evenly over the ranks, so it must be a multiple of
the number of processes); every rank builds the same run from the same seed, then
``cigl_bayes.train.distributed.distribute`` shards the data, wraps the SparseNet in DDP and
all-reduces RigL's growth gradients, so masks, random masks and drop/grow decisions are
identical on every rank. Gloo is used on CPU, NCCL on CUDA (each rank uses ``cuda:LOCAL_RANK``).
Without ``torchrun`` it runs as a single process. Models with BatchNorm normalise per rank
shard (see the module doc of ``cigl_bayes.train.distributed``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from cigl_bayes.config import recipe
from cigl_bayes.data import load_dataset
from cigl_bayes.evaluate import evaluate_log_probs
from cigl_bayes.methods import assemble, validate
from cigl_bayes.runner import build_predictive, final_predictions, known_class_log_probs, predictive_state
from cigl_bayes.train.distributed import distribute, init_from_env, is_main_process, world_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="cigl")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default=None)
    parser.add_argument("--density", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (all ranks together)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="rank 0 writes metrics.json and checkpoint.pt here")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION__FIELD=VALUE",
                        help="extra config overrides, values parsed as JSON when possible (e.g. optim__lr=0.05)")
    args = parser.parse_args()

    init_from_env()
    device = args.device
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    changes = {"method": args.method, "seed": args.seed, "device": device}
    for key, value in (("model__name", args.model), ("sparsity__density", args.density),
                       ("optim__epochs", args.epochs), ("data__batch_size", args.batch_size)):
        if value is not None:
            changes[key] = value
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    config = recipe(args.dataset).with_(**changes)
    validate(config)

    data = load_dataset(config.data.dataset, config.data.data_dir, config.data.val_fraction).to(config.device)
    out = Path(args.out) if args.out is not None else None
    if out is not None and is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt" if out is not None else None
    parts = distribute(assemble(config, data, checkpoint, progress=is_main_process()))
    history = parts.trainer.fit()

    if is_main_process():  # weights are identical on every rank: evaluate once
        predictive = build_predictive(parts, config, data)
        log_probs, notes = final_predictions(parts, config, data, predictive=predictive)
        k = data.num_classes
        record = {
            "method": config.method, "dataset": config.data.dataset, "seed": config.seed, "world_size": world_size(),
            **evaluate_log_probs(known_class_log_probs(log_probs["test"], k), data.y_test),
            "val": evaluate_log_probs(known_class_log_probs(log_probs["val"], k), data.y_val),
            **notes, "train_loss_rank0": history.loss, "config": config.to_dict(),
        }
        print(json.dumps({key: record[key] for key in record if key not in ("config", "val")}, default=float))
        if out is not None:
            parts.trainer.save(out / "checkpoint.pt", extra={"predictive": predictive_state(predictive[0], config, data)})
            (out / "metrics.json").write_text(json.dumps(record, indent=2, default=float))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))
    main()
