"""Seed files, the seed stream, and the datamodule's resume state."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from abspo.game.seeds import Seed, SeedDataModule, SeedStream, read_seed_file
from abspo.core.errors import ConfigError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def pool(n: int, harmful: bool, prefix: str) -> list[Seed]:
    return [Seed(f"{prefix}{i}", harmful) for i in range(n)]


def seed_files(tmp_path: Path, n_harmful: int = 12, n_benign: int = 8, source: str = "kit"):
    h = write_jsonl(tmp_path / "harmful.jsonl",
                    [{"prompt": f"h{i}", "label": "harmful", "source": source} for i in range(n_harmful)])
    b = write_jsonl(tmp_path / "benign.jsonl",
                    [{"prompt": f"b{i}", "label": "benign", "source": source} for i in range(n_benign)])
    return h, b


# -- read_seed_file -------------------------------------------------------------------------------------------


def test_read_seed_file_reads_rows_and_defaults(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "a", "label": "harmful", "source": "x"},
        "",  # blank lines are skipped
        {"prompt": "b"},  # no label: the list's label; no source: ""
    ])
    assert read_seed_file(path, "data.harmful[0]", "harmful") == [Seed("a", True, "x"), Seed("b", True, "")]
    assert read_seed_file(path, "data.benign[0]", None) == [Seed("a", True, "x"), Seed("b", False, "")]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(ConfigError) as err:
        read_seed_file(path, "data.harmful[0]", "harmful")
    assert err.value.key == "data.harmful[0]"
    assert "data.harmful[0]" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_seed_file(path, "data.benign[2]", "benign")
    assert err.value.key == "data.benign[2]"
    assert "data.benign[2]" in str(err.value) and "empty" in str(err.value) and str(path) in str(err.value)


def test_malformed_json_names_file_and_line(tmp_path):
    # line 2 is blank but still counts: the broken line is line 3
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "label": "harmful"}, "", '{"prompt": "oops",'])
    with pytest.raises(ConfigError) as err:
        read_seed_file(path, "data.harmful[0]", "harmful")
    assert err.value.key == "data.harmful[0]"
    assert "data.harmful[0]" in str(err.value) and f"{path}:3" in str(err.value)


@pytest.mark.parametrize("bad_row", [
    {"text": "no prompt"},
    {"prompt": ""},
    {"prompt": "   "},
    {"prompt": 7},
    ["prompt", "in a list"],
    "\"just a string\"",
])
def test_missing_prompt_field_names_file_and_line(tmp_path, bad_row):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"prompt": "ok too"}, bad_row])
    with pytest.raises(ConfigError) as err:
        read_seed_file(path, "data.benign[0]", "benign")
    assert err.value.key == "data.benign[0]"
    assert "data.benign[0]" in str(err.value) and f"{path}:3" in str(err.value) and "prompt" in str(err.value)


def test_wrong_label_in_list_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [{"prompt": "ok", "label": "harmful"},
                                              {"prompt": "bake a cake", "label": "benign"}])
    with pytest.raises(ConfigError) as err:
        read_seed_file(path, "data.harmful[1]", "harmful")
    assert err.value.key == "data.harmful[1]"
    assert "data.harmful[1]" in str(err.value) and f"{path}:2" in str(err.value) and "'benign'" in str(err.value)


def test_datamodule_names_the_index_of_the_bad_file(tmp_path):
    h, b = seed_files(tmp_path)
    bad = write_jsonl(tmp_path / "bad.jsonl", ["not json"])
    dm = SeedDataModule(harmful=[str(h), str(bad)], benign=[str(b)], batch_size=4)
    with pytest.raises(ConfigError) as err:
        dm.setup("fit")
    assert err.value.key == "data.harmful[1]" and f"{bad}:1" in str(err.value)


# -- SeedStream -----------------------------------------------------------------------------------------------


def test_the_harmful_count_rounds_half_up_and_a_share_that_rounds_away_is_refused(tmp_path):
    from abspo.game.seeds import harmful_per_batch

    assert [harmful_per_batch(b, f) for b, f in ((6, 0.25), (10, 0.25), (8, 0.5), (3, 0.5), (5, 0.5))] == [2, 3, 4, 2, 3]
    h, b = seed_files(tmp_path)
    for batch_size, fraction, every in ((2, 0.2, "benign"), (1, 0.5, "harmful")):
        with pytest.raises(ConfigError) as err:
            SeedDataModule(harmful=[str(h)], benign=[str(b)], batch_size=batch_size, harmful_fraction=fraction)
        assert err.value.key == "data.harmful_fraction" and f"every batch would be {every}" in err.value.problem


@pytest.mark.parametrize("fraction,n_harmful", [(0.0, 0), (0.5, 4), (1.0, 8), (0.25, 2)])
def test_stream_exact_harmful_count_per_batch(fraction, n_harmful):
    stream = SeedStream(pool(5, True, "h"), pool(7, False, "b"), batch_size=8, harmful_fraction=fraction, seed=3)
    for index in range(12):
        batch = stream.batch(index)
        assert batch.index == index
        assert len(batch.seeds) == 8
        assert sum(s.harmful for s in batch.seeds) == n_harmful
        # harmful seeds come from the harmful pool and benign ones from the benign pool
        assert all(s.prompt.startswith("h" if s.harmful else "b") for s in batch.seeds)


def test_stream_with_an_empty_unused_pool():
    only_benign = SeedStream([], pool(3, False, "b"), batch_size=2, harmful_fraction=0.0, seed=0)
    assert all(not s.harmful for i in range(5) for s in only_benign.batch(i).seeds)
    only_harmful = SeedStream(pool(3, True, "h"), [], batch_size=2, harmful_fraction=1.0, seed=0)
    assert all(s.harmful for i in range(5) for s in only_harmful.batch(i).seeds)


def test_stream_is_deterministic_in_seed_and_index():
    def make(seed):
        return SeedStream(pool(20, True, "h"), pool(20, False, "b"), batch_size=6, harmful_fraction=0.5, seed=seed)

    a, b, other = make(11), make(11), make(12)
    batches_a = [a.batch(i).seeds for i in range(8)]
    # random access in another order on a fresh stream gives the same batches (state-free)
    assert [b.batch(i).seeds for i in reversed(range(8))] == list(reversed(batches_a))
    # a stream consumed by iteration from a later start agrees too
    b.start = 5
    it = iter(b)
    assert [next(it).seeds for _ in range(3)] == batches_a[5:8]
    # another seed gives other batches
    assert [other.batch(i).seeds for i in range(8)] != batches_a
    assert sum(other.batch(i).seeds != batches_a[i] for i in range(8)) >= 6


def test_stream_without_replacement_within_an_epoch():
    # 4 harmful per batch from a pool of 12: batches 0-2 are exactly one pass over the pool;
    # 4 benign per batch from a pool of 8: batches 0-1 are one pass, batches 2-3 the next.
    stream = SeedStream(pool(12, True, "h"), pool(8, False, "b"), batch_size=8, harmful_fraction=0.5, seed=5)
    harmful = [s.prompt for i in range(3) for s in stream.batch(i).seeds if s.harmful]
    assert sorted(harmful) == sorted(f"h{i}" for i in range(12))
    benign_epoch0 = [s.prompt for i in range(2) for s in stream.batch(i).seeds if not s.harmful]
    benign_epoch1 = [s.prompt for i in range(2, 4) for s in stream.batch(i).seeds if not s.harmful]
    assert sorted(benign_epoch0) == sorted(benign_epoch1) == sorted(f"b{i}" for i in range(8))


def test_stream_epochs_across_batch_boundaries():
    # 4 harmful per batch from a pool of 10: batch 2 straddles the epoch boundary.
    stream = SeedStream(pool(10, True, "h"), [], batch_size=4, harmful_fraction=1.0, seed=9)
    first_two = [s.prompt for i in range(2) for s in stream.batch(i).seeds]
    assert len(set(first_two)) == 8  # 8 draws of the first pass: no repeat
    # 5 batches = 20 draws = exactly 2 passes: every seed exactly twice
    counts = Counter(s.prompt for i in range(5) for s in stream.batch(i).seeds)
    assert counts == Counter({f"h{i}": 2 for i in range(10)})


# -- SeedDataModule -------------------------------------------------------------------------------------------


def test_datamodule_batches_have_the_configured_mix(tmp_path):
    h, b = seed_files(tmp_path)
    dm = SeedDataModule(harmful=[str(h)], benign=[str(b)], batch_size=6, harmful_fraction=0.5, seed=1)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    for expected_index in range(3):
        batch = next(it)
        assert batch.index == expected_index
        assert sum(s.harmful for s in batch.seeds) == 3 and len(batch.seeds) == 6


@pytest.mark.parametrize("load_before_setup", [True, False])
def test_state_dict_round_trip_resumes_at_saved_batch(tmp_path, load_before_setup):
    h, b = seed_files(tmp_path)
    kwargs = dict(harmful=[str(h)], benign=[str(b)], batch_size=4, harmful_fraction=0.5, seed=7)
    first = SeedDataModule(**kwargs)
    first.setup("fit")
    it = iter(first.train_dataloader())
    uninterrupted = [next(it) for _ in range(6)]
    first.batches_served = 3  # what the training step records after batch 2
    state = first.state_dict()
    assert state == {"batches_served": 3}

    resumed = SeedDataModule(**kwargs)
    if load_before_setup:
        resumed.load_state_dict(state)
        resumed.setup("fit")
    else:
        resumed.setup("fit")
        resumed.load_state_dict(state)
    it = iter(resumed.train_dataloader())
    got = [next(it) for _ in range(3)]
    assert [g.index for g in got] == [3, 4, 5]
    assert [g.seeds for g in got] == [u.seeds for u in uninterrupted[3:6]]


@pytest.mark.parametrize("label", ["harmful", "benign"])
def test_a_listed_source_no_seed_comes_from_is_named_with_the_sources_there(tmp_path, label):
    """A misspelt source would otherwise train on the other listed sources alone, silently."""
    h, b = seed_files(tmp_path, source="kit-seeds")
    dm = SeedDataModule(harmful=[str(h)], benign=[str(b)], harmful_fraction=0.5,
                        **{f"{label}_sources": ["kit-seeds", "kit-seed"]})
    with pytest.raises(ConfigError) as err:
        dm.setup("fit")
    assert err.value.key == f"data.{label}_sources"
    assert "'kit-seed'" in err.value.problem and "did you mean 'kit-seeds'?" in err.value.fix
    assert f"the sources in data.{label} are: kit-seeds" in err.value.fix


def test_sources_filter_keeps_listed_sources(tmp_path):
    h = write_jsonl(tmp_path / "h.jsonl", [{"prompt": "keep", "label": "harmful", "source": "a"},
                                           {"prompt": "drop", "label": "harmful", "source": "b"}])
    _, b = seed_files(tmp_path)
    dm = SeedDataModule(harmful=[str(h)], benign=[str(b)], harmful_sources=["a"], batch_size=2, harmful_fraction=0.5)
    dm.setup("fit")
    harmful = {s.prompt for i in range(6) for s in dm.stream.batch(i).seeds if s.harmful}
    assert harmful == {"keep"}


def test_unused_pool_is_not_read(tmp_path):
    # harmful_fraction 0 never touches the harmful files (here: missing), and 1 never the benign ones
    h, b = seed_files(tmp_path)
    SeedDataModule(harmful=[str(tmp_path / "missing.jsonl")], benign=[str(b)], harmful_fraction=0.0).setup("fit")
    SeedDataModule(harmful=[str(h)], benign=[str(tmp_path / "missing.jsonl")], harmful_fraction=1.0).setup("fit")


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_invalid_harmful_fraction(fraction):
    with pytest.raises(ConfigError) as err:
        SeedDataModule(harmful_fraction=fraction)
    assert err.value.key == "data.harmful_fraction"


@pytest.mark.parametrize("batch_size", [0, -4])
def test_invalid_batch_size(batch_size):
    with pytest.raises(ConfigError) as err:
        SeedDataModule(batch_size=batch_size)
    assert err.value.key == "data.batch_size"
