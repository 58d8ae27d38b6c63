import json

from pipeline.cache import Cache, stage_key

TOOLS = {"tensorflow": "2.21.0"}


def test_the_key_changes_with_every_ingredient():
    base = stage_key("prune", "c1", {"sparsity": 0.75}, {"model": "abc"}, TOOLS)
    assert base == stage_key("prune", "c1", {"sparsity": 0.75}, {"model": "abc"}, TOOLS)
    variants = [
        stage_key("qat", "c1", {"sparsity": 0.75}, {"model": "abc"}, TOOLS),
        stage_key("prune", "c2", {"sparsity": 0.75}, {"model": "abc"}, TOOLS),
        stage_key("prune", "c1", {"sparsity": 0.5}, {"model": "abc"}, TOOLS),
        stage_key("prune", "c1", {"sparsity": 0.75}, {"model": "abd"}, TOOLS),
        stage_key("prune", "c1", {"sparsity": 0.75}, {"model": "abc"}, {"tensorflow": "2.22.0"}),
    ]
    assert len({base, *variants}) == 6


def test_a_put_entry_is_found_again_with_its_metadata(tmp_path):
    cache = Cache(tmp_path)

    def produce(folder):
        (folder / "out.bin").write_bytes(b"hello")
        return {"accuracy": 0.9}

    first = cache.put("train", "k1", produce)
    assert not first.reused
    again = cache.get("train", "k1")
    assert again.reused and again.meta["accuracy"] == 0.9
    assert again.file("out.bin").read_bytes() == b"hello"
    assert cache.get("train", "other") is None


def test_a_damaged_entry_is_discarded_not_reused(tmp_path, capsys):
    cache = Cache(tmp_path)
    entry = cache.put("train", "k1", lambda f: (f / "out.bin").write_bytes(b"hello") and {})
    entry.file("out.bin").write_bytes(b"hellO")
    assert cache.get("train", "k1") is None
    assert "damaged cache entry" in capsys.readouterr().err
    assert not entry.path.exists()


def test_an_entry_with_a_broken_record_is_discarded(tmp_path):
    cache = Cache(tmp_path)
    entry = cache.put("train", "k1", lambda f: {})
    (entry.path / "entry.json").write_text("{not json")
    assert cache.get("train", "k1") is None


def test_a_stage_that_fails_leaves_nothing_a_later_build_would_trust(tmp_path):
    cache = Cache(tmp_path)

    def produce(folder):
        (folder / "half.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    try:
        cache.put("train", "k1", produce)
    except KeyboardInterrupt:
        pass
    assert cache.get("train", "k1") is None
    assert not any((tmp_path / "train").iterdir())


def test_a_temp_folder_left_by_a_killed_build_is_never_read(tmp_path):
    cache = Cache(tmp_path)
    tmp = tmp_path / "train" / ".tmp-k1-123-abc"
    tmp.mkdir(parents=True)
    (tmp / "entry.json").write_text(json.dumps({"files": {}, "meta": {}}))
    assert cache.get("train", "k1") is None
