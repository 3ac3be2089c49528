"""The soak in the suite: benchmarks/soak.py for 30 seconds, its verdict asserted.

Two sender lanes, two anchor receivers, churn receivers joining and leaving,
a SIGKILL every few seconds (receivers, and senders replaced by new ones);
every packet checked by every receiver.  See benchmarks/soak.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"
SECONDS = 30
MB = 1 << 20


def test_thirty_second_soak_loses_nothing_and_stays_flat(name: str, tmp_path: Path) -> None:
    summary_file = tmp_path / "soak.json"
    command = [sys.executable, str(SOAK), "--seconds", str(SECONDS), "--name", name, "--json", str(summary_file)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=SECONDS + 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the soak kills its workers and removes its pipe
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"the {SECONDS}s soak did not finish within {SECONDS + 60}s\n{out[-3000:]}\n{err[-3000:]}")
    print("\n" + out)
    assert summary_file.exists(), f"no summary (exit {proc.returncode})\n{out[-3000:]}\n{err[-3000:]}"
    s = json.loads(summary_file.read_text())
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("VERDICT: "), verdict
    assert s["crashed"] == [], s["crashed"]
    assert (s["packets_lost"], s["corrupt"], s["disorder"]) == (0, 0, 0), (s["lost_detail"], s["problems"])
    assert s["packets_moved"] > 10_000, f"only {s['packets_moved']} packets moved in {SECONDS}s"
    assert all(tail >= 0 for tail in s["undelivered_tails"].values()), s["undelivered_tails"]
    # The faults did happen.
    assert s["receivers_killed"] >= 1, s
    assert s["receivers_joined"] >= 5, s
    assert s["receivers_left"] >= 1, s
    assert s["senders_killed"] >= 1, s
    # Flat: growth after warm-up, of each long-lived process and of the pipe's /dev/shm objects.
    assert s["rss_growth_bytes"] <= 32 * MB, s["rss_growth_by_process"]
    assert s["shm_growth_bytes"] <= 16 * MB, s["shm_pipe_min_max"]
    assert s["failures"] == [], s["failures"]
    assert s["verdict"] == "PASS"
    assert proc.returncode == 0, err[-3000:]
    assert verdict.startswith("VERDICT: PASS"), verdict
