"""A fixed-seed slice of the model-file fuzzer (tests/fuzz/), the crashes it found, and its oracle.

The contract: any bytes given to wb.load, then one predict on default inputs, end in success or
in one of the package's own errors naming the model; never another exception, a hang, or an
allocation the limits did not check first. ``make fuzz SECONDS=600`` runs the long version.
"""
import json
import re
import time
from pathlib import Path

import pytest

import workbench as wb
from fuzz import harness
from fuzz.runner import Fuzzer

CASES = Path(__file__).resolve().parent / "fuzz_cases"
SLICE_SEED, SLICE_EXAMPLES = 20240611, 500


@pytest.fixture(scope="module")
def layers():
    return harness.implementations()


def test_fixed_seed_slice_finds_no_crash(layers):
    """Small seeds only (built here, the bundled example, small corpus files): ~20 s."""
    seeds = harness.seed_models(max_bytes=10_000)
    assert len(seeds) >= 5
    fuzzer = Fuzzer(seeds, layers, case_seconds=10.0, shrink_seconds=20.0)
    with harness.memory_ceiling(3 << 30):
        fuzzer.run_batch(SLICE_SEED, deadline=time.time() + 120, max_examples=SLICE_EXAMPLES)
    crashes = {sig: (out.message, repr(case)) for sig, (_, out, case) in fuzzer.found.items()}
    assert not crashes, f"the fuzzer found crashes (signature -> message, case): {crashes}"
    stats = fuzzer.stats
    # the slice is not vacuous: cases ran cleanly, and several kinds of documented errors came up
    assert stats.cases >= SLICE_EXAMPLES // 2 and stats.ok >= 10
    assert len({p.split(":", 1)[0] for p in stats.errors}) >= 3, sorted(stats.errors)


@pytest.mark.parametrize("path", sorted(CASES.glob("*.mlmodel")), ids=lambda p: p.stem)
def test_crashes_found_by_the_fuzzer_now_end_in_their_documented_error(path, layers):
    expected = json.loads(path.with_suffix(".json").read_text())
    outcome = harness.run_case(path.read_bytes(), layers, seconds=30)
    assert outcome.kind == "error", outcome
    assert outcome.error_type == expected["expect"]
    assert re.search(expected["match"], outcome.message), outcome.message


def test_fuzz_cases_folder_is_not_empty():
    assert list(CASES.glob("*.mlmodel")), "tests/fuzz_cases holds the minimized crash inputs"


# ---------------------------------------------------------------- the oracle can fail

def _tiny_model():
    return dict(harness.built_seeds())["custom_chain"].SerializeToString()


def test_oracle_flags_a_foreign_exception(monkeypatch, layers):
    def broken_load(*args, **kwargs):
        raise IndexError("list index out of range")
    monkeypatch.setattr(wb, "load", broken_load)
    outcome = harness.run_case(_tiny_model(), layers)
    assert (outcome.kind, outcome.why, outcome.error_type) == ("crash", "not a workbench error", "IndexError")


def test_oracle_flags_an_unchecked_memory_error(monkeypatch, layers):
    def oom_load(*args, **kwargs):
        try:
            raise MemoryError("Unable to allocate 4.00 TiB for an array")
        except MemoryError as e:
            raise wb.LayerError("<bytes>", "big", "ran out of memory") from e
    monkeypatch.setattr(wb, "load", oom_load)
    outcome = harness.run_case(_tiny_model(), layers)
    assert (outcome.kind, outcome.why) == ("crash", "unchecked MemoryError")


def test_oracle_flags_an_anonymous_message_and_a_hang(monkeypatch, layers):
    monkeypatch.setattr(wb, "load", lambda *a, **k: (_ for _ in ()).throw(wb.ModelFormatError("bad")))
    assert harness.run_case(_tiny_model(), layers).why == "message does not name the model"

    def slow_load(*args, **kwargs):
        while True:
            time.sleep(0.01)
    monkeypatch.setattr(wb, "load", slow_load)
    outcome = harness.run_case(_tiny_model(), layers, seconds=0.3)
    assert (outcome.kind, outcome.why) == ("crash", "hang")


def test_every_seed_runs_cleanly_before_mutation(layers):
    """A seed that already fails would waste the fuzzer's time on one error."""
    for name, data in harness.seed_models(max_bytes=10_000):
        outcome = harness.run_case(data, layers)
        assert outcome.kind == "ok", (name, outcome)
