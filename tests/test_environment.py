"""The environment is part of the result: the lock pins all of it, every record names it, and a
comparison of two result sets made with different locks says so."""

from __future__ import annotations

import site
from importlib.metadata import distributions

from peft_bench.core.environment import LOCK_FILE, environment, lock_mismatches, lock_state, read_lock

# installed by venv/pip themselves, or this project (installed with --no-deps from the checkout)
NOT_LOCKED = {"pip", "setuptools", "wheel", "peft-bench"}


def _name(dist) -> str:
    return dist.metadata["Name"].lower().replace("_", "-").replace(".", "-")


def test_the_lock_pins_every_installed_package_exactly():
    pins = {k.replace(".", "-"): v for k, v in read_lock(LOCK_FILE).items()}
    # the environment's own site-packages (an imported ray puts its vendored packages on sys.path)
    installed = {_name(d): d.version for d in distributions(path=site.getsitepackages())}
    unpinned = sorted(set(installed) - set(pins) - NOT_LOCKED)
    assert not unpinned, f"installed but not in requirements.lock: {unpinned}"
    assert {"torch", "transformers", "peft", "datasets", "pytest", "ray"} <= set(pins)
    assert lock_mismatches(pins) == {}, "installed versions differ from requirements.lock"
    assert lock_state()["matches"] is True and len(lock_state()["sha256"]) == 64


def test_a_version_that_differs_from_the_lock_is_named():
    pins = read_lock(LOCK_FILE)
    wrong = {"peft": "0.0.1", "no-such-package-xyz": "1.0", "torch": pins["torch"]}
    assert lock_mismatches(wrong) == {"no-such-package-xyz": {"locked": "1.0", "installed": None},
                                      "peft": {"locked": "0.0.1", "installed": pins["peft"]}}
    # and torch is not named: a build label (+cpu, +cu128) is the same release as the pin


def test_records_carry_the_lock_and_the_report_and_compare_show_it(tmp_path):
    import hashlib

    import torch

    from peft_bench.results.compare import compare_markdown
    from peft_bench.results.report import lock_summary
    from tests.test_report import rec

    env = environment(torch.device("cpu"))
    assert env["lock"]["sha256"] == hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
    a = [rec("lora", 0, 0.8, 2000), rec("prompt_tuning", 0, 0.7, 100)]
    for r in a:
        r.env.lock = dict(env["lock"])
    assert f"sha256 `{env['lock']['sha256'][:16]}`: 2 run(s), installed packages match it" in lock_summary(a)
    b = [rec("lora", 0, 0.8, 2000)]
    b[0].env.lock = {"sha256": "f" * 64, "matches": False,
                        "mismatches": {"transformers": {"locked": "5.23.0", "installed": "5.24.0"}}}
    assert "transformers 5.24.0 (locked 5.23.0)" in lock_summary(b)
    assert "**several locks:**" in lock_summary(a + b)
    text = compare_markdown(a, b, "A", "B")
    assert "**Different environments:**" in text and "ffffffffffffffff" in text
    assert "Different environments" not in compare_markdown(a, a, "A", "A2")


def test_doctor_reads_the_contract_tests_per_method_and_drops_caps(tmp_path):
    from peft_bench.cli.doctor import parse_junit, requirements
    from peft_bench.core.environment import ROOT

    junit = tmp_path / "j.xml"
    junit.write_text(
        '<testsuites><testsuite>'
        '<testcase name="test_loss_falls[prefix_tuning-tiny-bert-projection=True]">'
        '<error message="ValueError: Model does not support past key values">tb</error></testcase>'
        '<testcase name="test_loss_falls[lora-tiny-bert-]"/>'
        '<testcase name="test_parameter_counts_follow_their_formulas[tiny-bert]"/>'
        '</testsuite></testsuites>')
    got = parse_junit(junit, {"lora", "prefix_tuning"})
    assert got["lora"].passed == 1 and not got["lora"].failed
    assert got["(other tests)"].passed == 1  # "tiny-bert" is a model, not a method
    assert got["prefix_tuning"].failed == [("test_loss_falls[prefix_tuning-tiny-bert-projection=True]",
                                            "ValueError: Model does not support past key values")]
    capped, uncapped = requirements(ROOT / "pyproject.toml", False), requirements(ROOT / "pyproject.toml", True)
    tf = next(r for r in capped if r.startswith("transformers"))
    assert "<" in tf and next(r for r in uncapped if r.startswith("transformers")) == "transformers>=5.0"
    assert "torch==2.13.0" in uncapped  # the exact pin stays: newer torch releases are CUDA builds
