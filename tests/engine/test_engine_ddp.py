"""A 2-process CPU DDP run (torchrun, gloo) of the tiny recipe."""

import json
import os
import subprocess
import sys

from test_engine_train import _pseudo_dataset


def test_two_process_cpu_ddp(tmp_path):
    data, images, _ = _pseudo_dataset(tmp_path, n=4)
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cuts3d",
           "train", "--data", str(data), "--images", str(images), "--output", str(run), "--config", "tiny_cpu",
           "max_iter=3", "log_period=1", "batch_size=2", "eval_period=2", f"val_data={data}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in train_records] == [1, 2, 3]  # written once (rank 0), not per process
    # rank 0 evaluates while the other process waits at a barrier: every eval_period and after the last iteration
    assert [m["iteration"] for m in metrics if "segm/AP50" in m] == [2, 3]
    assert (run / "model_final.pth").is_file()
