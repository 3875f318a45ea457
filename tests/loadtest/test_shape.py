"""The spike schedule (pure) and the locust shape that wraps it (in a subprocess: locust
monkey-patches whatever process imports it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loadtest.schedule import PRESETS, SpikeConfig, Stage, phase_at, preset, schedule

ROOT = Path(__file__).resolve().parents[2]
CONFIG = SpikeConfig(
    baseline_users=10,
    spike_users=100,
    baseline_seconds=20,
    spike_seconds=15,
    recovery_seconds=10,
    jump_seconds=1,
)


def test_phases_follow_each_other_and_the_run_stops_after_recovery() -> None:
    assert phase_at(0, CONFIG) == "baseline"
    assert phase_at(19.99, CONFIG) == "baseline"
    assert phase_at(20, CONFIG) == "spike"
    assert phase_at(34.99, CONFIG) == "spike"
    assert phase_at(35, CONFIG) == "recovery"
    assert phase_at(44.99, CONFIG) == "recovery"
    assert phase_at(45, CONFIG) is None
    assert schedule(45, CONFIG) is None
    assert schedule(1e6, CONFIG) is None


def test_each_phase_asks_for_its_users() -> None:
    assert schedule(5, CONFIG) == Stage("baseline", 10, 10)
    assert schedule(25, CONFIG) == Stage("spike", 100, 90)
    assert schedule(40, CONFIG) == Stage("recovery", 10, 90)


@pytest.mark.parametrize("jump_seconds", [0.5, 1, 2, 3])
def test_the_jump_completes_within_jump_seconds(jump_seconds: float) -> None:
    config = SpikeConfig(baseline_users=7, spike_users=150, jump_seconds=jump_seconds)
    stage = schedule(config.baseline_seconds, config)
    assert stage is not None and stage.phase == "spike"
    jump = config.spike_users - config.baseline_users
    # locust's start() blocks until the ramp completes: the spawn rate must cover the jump
    assert stage.spawn_rate * jump_seconds >= jump
    if jump_seconds <= 1:
        assert stage.spawn_rate >= jump


def test_the_schedule_is_constant_within_a_phase() -> None:
    stages = {schedule(t / 10, CONFIG) for t in range(450)}
    assert len(stages) == 3


def test_spike_window_and_total() -> None:
    assert CONFIG.spike_window == (20, 35)
    assert CONFIG.total_seconds == 45


def test_env_overrides_a_preset_and_round_trips() -> None:
    env = {"SPIKE_PRESET": "full", "SPIKE_SPIKE_USERS": "5000", "SPIKE_HOLD": "ignored"}
    config = SpikeConfig.from_env(env)
    assert config.spike_users == 5000
    assert config.baseline_users == PRESETS["full"].baseline_users
    assert SpikeConfig.from_env(config.to_env()) == config


def test_defaults_are_the_default_preset() -> None:
    assert SpikeConfig.from_env({}) == PRESETS["default"] == SpikeConfig()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPIKE_PRESET": "huge"}, "unknown spike preset"),
        ({"SPIKE_SPIKE_USERS": "lots"}, "SPIKE_SPIKE_USERS='lots' is not a valid int"),
        ({"SPIKE_SPIKE_USERS": "10", "SPIKE_BASELINE_USERS": "10"}, "must exceed"),
        ({"SPIKE_SPIKE_SECONDS": "0"}, "spike_seconds must be > 0"),
        ({"SPIKE_BASELINE_USERS": "0"}, "baseline_users must be >= 1"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpikeConfig.from_env(env)


def test_presets_fit_their_purpose() -> None:
    assert preset("smoke").total_seconds < 60
    assert preset("default").total_seconds <= 120
    assert preset("full").spike_users > preset("default").spike_users


def test_locust_shape_follows_the_schedule_and_announces_phases() -> None:
    """SpikeShape.tick() returns the schedule's users and rate, tells the runner each new
    phase once, and returns None at the end."""
    script = textwrap.dedent(
        """
        import json, sys
        from loadtest.shape import PHASE_MESSAGE, SpikeShape
        from locust import LoadTestShape

        class Runner:
            def __init__(self):
                self.sent = []
            def send_message(self, kind, data):
                self.sent.append([kind, data])

        shape = SpikeShape()
        shape.runner = Runner()
        ticks = []
        for t in [0, 5, 19.9, 20, 30, 35, 44, 45]:
            shape.get_run_time = lambda t=t: t
            ticks.append(shape.tick())
        json.dump({"ticks": ticks, "sent": shape.runner.sent,
                   "is_shape": isinstance(shape, LoadTestShape),
                   "message": PHASE_MESSAGE}, sys.stdout)
        """
    )
    env = {**os.environ, **CONFIG.to_env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["is_shape"]
    assert out["ticks"] == [
        [10, 10],
        [10, 10],
        [10, 10],
        [100, 90],
        [100, 90],
        [10, 90],
        [10, 90],
        None,
    ]
    msg = out["message"]
    assert out["sent"] == [[msg, "baseline"], [msg, "spike"], [msg, "recovery"]]
