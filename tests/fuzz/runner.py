"""Drive hypothesis over the fuzz cases: batches of examples until a deadline, crashes shrunk and kept.

Hypothesis stops at the first failing example of a run and shrinks it. A fuzz run wants to go on
after that, so it runs in batches (one hypothesis run each, a new seed each): a crash found in a
batch is shrunk (for at most ``shrink_seconds``), saved, and its signature becomes known, so
later batches count it but do not stop on it again.
"""
import hashlib
import json
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky

from . import harness, mutations


class Fuzzer:
    def __init__(self, seeds, layers, out=None, case_seconds=20.0, shrink_seconds=60.0, before_case=None):
        self.names = [name for name, _ in seeds]
        self.seeds = [data for _, data in seeds]
        self.layers = layers
        self.out = Path(out) if out else None
        self.case_seconds, self.shrink_seconds = case_seconds, shrink_seconds
        self.before_case = before_case
        self.stats = harness.Stats()
        self.known = set()            # signatures already found: counted, no longer failing a batch
        self.found = {}               # signature -> (data, outcome, case), smallest data kept

    def check(self, case, deadline):
        """The property: one case either passes or raises AssertionError describing the crash."""
        if time.time() > deadline:
            return
        try:
            data = mutations.build(case, self.seeds, sorted(self.layers))
        except (ValueError, TypeError, OverflowError):
            return                    # a mutation protobuf refused (a value out of a field's range)
        if self.shrinking_since and time.time() - self.shrinking_since > self.shrink_seconds \
                and _digest(data) not in self.failing:
            return                    # shrink budget spent: only the failures seen still fail
        if self.before_case:
            self.before_case(data)
        outcome = harness.run_case(data, self.layers, self.case_seconds)
        self.stats.add(outcome)
        if outcome.kind != "crash" or outcome.signature in self.known:
            return
        self.failing.add(_digest(data))
        self.shrinking_since = self.shrinking_since or time.time()
        kept = self.found.get(outcome.signature)
        if kept is None or len(data) < len(kept[0]):
            self.found[outcome.signature] = (data, outcome, case)
        raise AssertionError(f"{outcome.why}: {outcome.error_type}: {outcome.message[:500]}\n"
                             f"seed model: {self.names[case[0]]}")

    def run_batch(self, seed, deadline, max_examples=100):
        """One hypothesis run; returns the signatures of the crashes it found."""
        self.shrinking_since, self.failing = None, set()
        before = set(self.found)

        @hypothesis_seed(seed)
        @settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
                  phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
                  report_multiple_bugs=False, print_blob=False)
        @given(case=mutations.cases(len(self.seeds)))
        def property_(case):
            self.check(case, deadline)

        try:
            property_()
        except (AssertionError, Flaky):
            pass
        except Exception as e:                       # hypothesis itself gave up on something
            if not (set(self.found) - before):
                raise RuntimeError(f"the fuzz batch with seed {seed} failed outside a case: {e}") from e
        new = set(self.found) - before
        self.known.update(new)
        for signature in new:
            self.save(signature)
        return new

    def run(self, deadline, seed=0, max_examples=100):
        batch = 0
        while time.time() < deadline:
            self.run_batch(seed + batch, deadline, max_examples)
            batch += 1
        return self.stats

    def save(self, signature):
        if self.out is None:
            return
        data, outcome, case = self.found[signature]
        self.out.mkdir(parents=True, exist_ok=True)
        stem = "crash-" + hashlib.sha1(signature.encode()).hexdigest()[:10]
        (self.out / f"{stem}.mlmodel").write_bytes(data)
        (self.out / f"{stem}.json").write_text(json.dumps({
            "why": outcome.why, "error_type": outcome.error_type, "message": outcome.message,
            "signature": signature, "seed_model": self.names[case[0]], "case": repr(case)}, indent=1))


def _digest(data):
    return hashlib.sha1(data).hexdigest()
