"""Scale-out of extraction on a Ray cluster: each shard is one Ray task (one GPU each when the cluster has GPUs).

Tasks write the same crash-safe, locked shard logs as the local engine (one record per finished image), so a
retried task resumes where the failed one stopped and the merged JSON equals a local run's. The driver shows
overall progress (images) and merges.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from cuts3d.pipeline.extract import ExtractConfig, finish_merge, prepare_output, run_shard, write_run_meta
from cuts3d.pipeline.shards import read_log, shard_items, shard_log_path


def _remaining(cfg: ExtractConfig, records: list, index: int, count: int) -> int:
    done = {r["rel"] for r in read_log(shard_log_path(Path(cfg.output), index, count))}
    return sum(r.rel not in done for r in shard_items(records, index, count))


def extract_ray(cfg: ExtractConfig, num_shards: int, address: str | None = None, max_retries: int = 3,
                overwrite: bool = False) -> Path:
    """Run ``num_shards`` shards as Ray tasks, then merge into ``cfg.output/annotations.json``.

    Args:
        cfg: the job (its ``shard`` field is ignored).
        num_shards: K, the number of tasks.
        address: Ray cluster address (``auto`` or ``ray://host:port``); None starts a local cluster.
        max_retries: Ray retries of a failed task (it resumes from its shard log).
        overwrite: replace results of other settings in ``cfg.output`` (see :func:`cuts3d.pipeline.extract.prepare_output`).
    """
    import ray

    from cuts3d.io.images import scan_images

    listing = scan_images(cfg.images)
    records = listing.records
    claim = prepare_output(cfg, overwrite)  # OUT/fingerprint.json check, stale temporary files, config.yaml
    try:
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        try:
            gpus = ray.cluster_resources().get("GPU", 0)

            @ray.remote(num_gpus=1 if gpus else 0, max_retries=max_retries, retry_exceptions=True)
            def shard_task(config: ExtractConfig, index: int) -> dict | None:
                if gpus:
                    config = ExtractConfig.from_dict({**config.to_dict(), "device": "cuda"})
                _, models = run_shard(config, records, index, num_shards, progress=lambda n: None)
                return models.metadata() if models is not None else None

            pending = [shard_task.remote(cfg, i) for i in range(num_shards)]
            model_meta = None
            total = sum(_remaining(cfg, records, i, num_shards) for i in range(num_shards))
            with tqdm(total=total, desc="ray shards", unit="img") as bar:
                done_before = 0
                while pending:
                    finished, pending = ray.wait(pending, timeout=1.0)
                    for meta in ray.get(finished):  # re-raises a task's final failure here
                        model_meta = model_meta or meta
                    left = sum(_remaining(cfg, records, i, num_shards) for i in range(num_shards))
                    bar.update(total - left - done_before)
                    done_before = total - left
        finally:
            if started_here:
                ray.shutdown()
        write_run_meta(cfg, model_meta)
        finish_merge(cfg, listing)  # drops images no longer in the input; prints the summary line
    finally:
        claim.close()
    return Path(cfg.output) / "annotations.json"
