"""Scale-out of extraction on a Ray cluster: each shard is one Ray task (one GPU each when the cluster has GPUs).

With ``cut_workers`` K >= 1 a shard task runs only the model stage (load, ViT, depth) and hands each image's
cut stage to one of K Ray actors (``num_cpus=1``, one thread; :class:`cuts3d.pipeline.cut_workers.RayCutExecutor`),
at most 2K in flight per shard, logging each record as it completes (the bounded loop of :func:`cuts3d.pipeline.extract.run_shard`); the shard task then reserves
no CPU, so the cut actors get all of them.

Tasks write the same crash-safe, locked shard logs as the local engine (one record per finished image), so a
retried task resumes where the failed one stopped and the merged JSON equals a local run's. The driver shows
overall progress (images), counted from what the tasks report to a small counter actor (re-reading every
shard log every second would read GBs per poll on ImageNet), and merges.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from cuts3d.pipeline.extract import ExtractConfig, finish_merge, prepare_output, run_shard, write_run_meta
from cuts3d.pipeline.shards import logged_status, shard_items, shard_log_path


def _remaining(cfg: ExtractConfig, records: list, index: int, count: int) -> int:
    """Images of shard ``index`` without a record in its log (read once, at the start: names only)."""
    done = logged_status(shard_log_path(Path(cfg.output), index, count))
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

            @ray.remote(num_cpus=0)
            class Progress:
                """Images finished by all tasks, as they report them (a retried task resumes, so counts add up)."""

                def __init__(self) -> None:
                    self.done = 0

                def add(self, n: int) -> None:
                    self.done += n

                def get(self) -> int:
                    return self.done

            counter = Progress.remote()

            workers = cfg.cut_workers
            # With cut tasks the shard task only feeds them (and the GPU): it must not hold a CPU they need.
            cpus = {"num_cpus": 0} if workers else {}

            @ray.remote(num_gpus=1 if gpus else 0, max_retries=max_retries, retry_exceptions=True, **cpus)
            def shard_task(config: ExtractConfig, index: int) -> dict | None:
                if gpus:
                    config = ExtractConfig.from_dict({**config.to_dict(), "device": "cuda"})
                executor = None
                if workers:
                    from cuts3d.pipeline.cut_workers import RayCutExecutor

                    executor = lambda: RayCutExecutor(workers)  # noqa: E731
                _, models = run_shard(config, records, index, num_shards, progress=lambda n: counter.add.remote(n),
                                      cut_executor=executor)
                return models.metadata() if models is not None else None

            pending = [shard_task.remote(cfg, i) for i in range(num_shards)]
            model_meta = None
            total = sum(_remaining(cfg, records, i, num_shards) for i in range(num_shards))
            with tqdm(total=total, desc="ray shards", unit="img") as bar:
                while pending:
                    finished, pending = ray.wait(pending, timeout=1.0)
                    for meta in ray.get(finished):  # re-raises a task's final failure here
                        model_meta = model_meta or meta
                    # A retried task redoes its failed images: cap so the bar never passes the total.
                    bar.update(min(ray.get(counter.get.remote()), total) - bar.n)
        finally:
            if started_here:
                ray.shutdown()
        write_run_meta(cfg, model_meta)
        finish_merge(cfg, listing)  # drops images no longer in the input; prints the summary line
    finally:
        claim.close()
    return Path(cfg.output) / "annotations.json"
