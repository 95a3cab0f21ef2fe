"""The fingerprint of result-changing settings and the output folder's claim on it (cuts3d.pipeline.fingerprint;
issue 11, item 2). No model is built: these run in well under a second each."""

import json
import os

import pytest

from cuts3d.pipeline.extract import ExtractConfig, resolve_config
from cuts3d.pipeline.fingerprint import (
    FINGERPRINT_FILE,
    FingerprintMismatchError,
    OutputBusyError,
    claim_output,
    depth_cache_key,
    fingerprint,
    result_settings,
)

TINY = ["backbone=dino_vits16", "weights=none", "depth_weights=none", "size=128", "depth_overrides=tiny",
        "depth_input_size=56", "cut.crf=false"]


def _cfg(*extra: str, **base) -> ExtractConfig:
    return resolve_config({"images": "imgs", "output": "out", **base}, None, TINY + list(extra))


def _fp(*extra: str, **base) -> str:
    return fingerprint(result_settings(_cfg(*extra, **base)))


def test_every_result_setting_changes_the_fingerprint_and_nothing_else_does(tmp_path):
    base = _fp()
    for changed in ("cut.n_iters=1", "cut.method=maskcut", "backbone=dino_vits8", "size=112", "feature=q",
                    "depth=zoedepth", "depth_input_size=70", "seed=1", "max_pixels=1000", "cut.tau_knn=0.1",
                    "cut.confidence_taus=[0.1, 0.2]", "cut.eigensolver=dense", "depth_overrides={}"):
        assert _fp(changed) != base, changed
    for same in ("batch_size=1", "shard=1/4", "cache_depth=false", f"depth_cache={tmp_path}", "images=other",
                 "output=elsewhere", "cut.depth_gain=1", "cut.device=cpu"):
        assert _fp(same) == base, same
    # the backbone weights enter by content, not by path: a moved copy resumes, another file does not
    a, b, c = tmp_path / "a.pth", tmp_path / "sub" / "a.pth", tmp_path / "c.pth"
    b.parent.mkdir()
    a.write_bytes(b"checkpoint")
    b.write_bytes(b"checkpoint")
    c.write_bytes(b"other checkpoint")
    assert _fp(f"weights={a}") == _fp(f"weights={b}") != _fp(f"weights={c}")
    # a depth-model folder enters by the sha256 of its weights and config files
    folder = tmp_path / "depth"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w1")
    first = result_settings(_cfg(f"depth_weights={folder}", "depth_overrides={}"))
    (folder / "model.safetensors").write_bytes(b"w2")
    assert result_settings(_cfg(f"depth_weights={folder}", "depth_overrides={}"))["depth.weights"] != first["depth.weights"]


def test_missing_weights_fail_before_anything_is_written(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        result_settings(_cfg(f"weights={tmp_path / 'nope.pth'}"))
    with pytest.raises(FileNotFoundError, match="no_folder"):
        result_settings(_cfg(f"depth_weights={tmp_path / 'no_folder'}", "depth_overrides={}"))


def test_depth_cache_key_covers_the_depth_settings_only():
    key = depth_cache_key(_cfg())
    assert key.startswith("depth_anything_v2_small-fp")
    assert depth_cache_key(_cfg("cut.tau_knn=0.1")) == depth_cache_key(_cfg("backbone=dino_vits8")) == key
    others = {depth_cache_key(_cfg(x)) for x in ("size=112", "depth_input_size=70", "seed=3", "depth_overrides={}")}
    assert key not in others and len(others) == 4
    assert depth_cache_key(_cfg("cut.method=maskcut")) is None  # MaskCut uses no depth
    assert depth_cache_key(_cfg("depth=precomputed:/data/depth")) is None  # files, not cached


def _results(out):
    """Pretend a run wrote a record, its merged JSON and its config."""
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / "shards" / "shard-00000-of-00001.jsonl").write_text('{"rel": "a.jpg"}\n')
    (out / "annotations.json").write_text("{}")
    (out / "config.yaml").write_text("old: true\n")


def test_claim_resumes_refuses_and_overwrites(tmp_path):
    out = tmp_path / "out"
    old, new = result_settings(_cfg()), result_settings(_cfg("cut.n_iters=1", "size=112"))
    with claim_output(out, old) as claim:
        assert claim.action == "created"
    stored = json.loads((out / FINGERPRINT_FILE).read_text())
    assert stored["fingerprint"] == fingerprint(old) and stored["settings"]["cut.n_iters"] == 3
    _results(out)
    with claim_output(out, old) as claim:
        assert claim.action == "resumed"
    with claim_output(out, old, overwrite=True) as claim:  # same settings: --overwrite keeps the results
        assert claim.action == "resumed"
    assert (out / "annotations.json").exists()

    with pytest.raises(FingerprintMismatchError) as err:
        claim_output(out, new)
    message = str(err.value)
    assert "\n" not in message and "cut.n_iters: 3 -> 1" in message and "size: 128 -> 112" in message
    assert "--overwrite" in message and str(out) in message
    assert "cut.tau_knn" not in message  # only the keys that differ
    assert (out / "annotations.json").exists() and json.loads((out / FINGERPRINT_FILE).read_text()) == stored

    cache = out / "depth_cache"
    (cache / "depth_anything_v2_small-random-in56x56").mkdir(parents=True)  # the old, size-blind layout
    (cache / depth_cache_key(_cfg())).mkdir()  # a current key: valid for any run that asks for it
    (out / "notes.txt").write_text("mine")
    with claim_output(out, new, overwrite=True, depth_caches=(cache,)) as claim:
        assert claim.action == "overwritten"
    assert not (out / "shards").exists() and not (out / "annotations.json").exists()
    assert not (out / "config.yaml").exists() and (out / "notes.txt").exists()
    assert sorted(p.name for p in cache.iterdir()) == [depth_cache_key(_cfg())]
    assert json.loads((out / FINGERPRINT_FILE).read_text())["fingerprint"] == fingerprint(new)


def test_claim_replaces_a_fingerprint_without_results_and_refuses_unknown_results(tmp_path):
    out = tmp_path / "out"
    claim_output(out, result_settings(_cfg())).close()
    # a start that failed before its first image (e.g. a wrong weights file) may be redone with other settings
    with claim_output(out, result_settings(_cfg("size=112"))) as claim:
        assert claim.action == "replaced"
    # results of an older cuts3d (no fingerprint.json) cannot be checked: refused, --overwrite starts over
    legacy = tmp_path / "legacy"
    _results(legacy)
    with pytest.raises(FingerprintMismatchError, match="older cuts3d.*--overwrite"):
        claim_output(legacy, result_settings(_cfg()))
    claim_output(legacy, result_settings(_cfg()), overwrite=True).close()
    assert not (legacy / "annotations.json").exists()
    # a damaged fingerprint beside results: refused with its name, unless --overwrite
    broken = tmp_path / "broken"
    _results(broken)
    (broken / FINGERPRINT_FILE).write_text("[1, 2")
    with pytest.raises(FingerprintMismatchError, match="fingerprint.json: unreadable"):
        claim_output(broken, result_settings(_cfg()))
    with claim_output(broken, result_settings(_cfg()), overwrite=True) as claim:
        assert claim.action == "overwritten"


def test_a_running_extraction_keeps_its_folder(tmp_path):
    out = tmp_path / "out"
    settings = result_settings(_cfg())
    with claim_output(out, settings):
        _results(out)
        with claim_output(out, settings) as second:  # another shard of the same job joins
            assert second.action == "resumed"
        # other settings with --overwrite would delete the running job's results: refused while it holds the folder
        with pytest.raises(OutputBusyError, match="running here"):
            claim_output(out, result_settings(_cfg("size=112")), overwrite=True, lock_wait_s=0.2)
        assert (out / "annotations.json").exists()
    with claim_output(out, result_settings(_cfg("size=112")), overwrite=True) as claim:  # once it has ended
        assert claim.action == "overwritten"


def test_unwritable_output_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputBusyError, match="cannot write there"):
        claim_output(blocker / "out", result_settings(_cfg()))
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(OutputBusyError, match="writable --output"):
            claim_output(ro, result_settings(_cfg()))


def test_differing_keys_compares_full_values_not_their_shortened_text():
    from cuts3d.pipeline.fingerprint import differing_keys

    long_a, long_b = "x" * 50 + "a", "x" * 50 + "b"  # equal in their first 37 characters
    assert [line.split(":")[0] for line in differing_keys({"k": long_a, "same": 1}, {"k": long_b, "same": 1})] == ["k"]
    assert differing_keys({"nan": float("nan")}, {"nan": float("nan")}) == []


def test_results_of_an_earlier_cut_implementation_are_not_resumed(tmp_path):
    # Issue 12 changed the cut stage's arithmetic (float32 graph, batched CRF): masks equal up to ties, so a
    # folder cut by the earlier code must not be completed by this one.
    out = tmp_path / "out"
    settings = result_settings(_cfg())
    assert settings["cut.implementation"] == 3
    earlier = {k: v for k, v in settings.items() if k != "cut.implementation"}
    with claim_output(out, earlier):
        pass
    _results(out)
    with pytest.raises(FingerprintMismatchError, match="cut.implementation: - -> 3"):
        claim_output(out, settings)
    # the same for a folder of the second version (float rounding of the graph's removed patches changed)
    out2 = tmp_path / "out2"
    with claim_output(out2, {**settings, "cut.implementation": 2}):
        pass
    _results(out2)
    with pytest.raises(FingerprintMismatchError, match="cut.implementation: 2 -> 3"):
        claim_output(out2, settings)


def test_cut_workers_record_the_solver_they_run():
    # Cut workers cut on the CPU, where eigensolver=auto is Lanczos; inline cuts on a GPU use torch's eigh.
    assert result_settings(_cfg("device=cuda", "cut.device=cuda"))["cut.eigensolver"] == "torch"
    assert result_settings(_cfg("device=cuda", "cut.device=cuda", "cut_workers=2"))["cut.eigensolver"] == "lanczos"
    assert _fp("cut_workers=2") == _fp()  # on a CPU the workers change nothing
