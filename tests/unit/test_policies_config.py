"""The policy sections of the config: defaults, the example file, refusals, and the objects they build."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ingestd.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_defaults_follow_the_regulations() -> None:
    config = Config()
    assert config.deadlines.window == timedelta(hours=24)
    assert config.deadlines.max_extension_working_days == 3
    assert (config.deadlines.country, config.deadlines.timezone) == ("CN", "Asia/Shanghai")
    assert config.gaps.threshold == timedelta(minutes=10)
    assert config.clock.drift_alarm_seconds == 30.0
    rules = config.retention.rules()
    assert (rules.routine_months, rules.standard_years, rules.notice_days) == (6, 3, 14)
    assert "mass-incident" in rules.long_term_tags


def test_the_example_file_sets_the_policy_sections_to_the_defaults() -> None:
    example = load_config(REPO / "config.example.toml")
    defaults = Config()
    for section in ("deadlines", "gaps", "clock", "retention"):
        assert getattr(example, section) == getattr(defaults, section), section


def test_toml_dates_build_the_calendar(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "[deadlines]\nextra_working_days = [2027-01-09]\nextra_holidays = ['2027-01-11']\n",
    )
    assert config.deadlines.extra_working_days == (date(2027, 1, 9),)
    calendar = config.deadlines.calendar()
    assert calendar.is_working_day(date(2027, 1, 9))
    assert not calendar.is_working_day(date(2027, 1, 11))
    friday = datetime(2027, 1, 8, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert calendar.add_working_days(friday, 2) == datetime(2027, 1, 12, 1, 0, tzinfo=UTC)


def test_tags_are_normalized(tmp_path: Path) -> None:
    config = load(tmp_path, "[retention]\nlong_term_tags = ['Evidence', 'Mass incident', 'evidence']\n")
    assert config.retention.long_term_tags == ("evidence", "mass-incident")
    assert config.retention.rules().long_term_tags == frozenset({"evidence", "mass-incident"})
    assert config.retention.rules() != Config().retention.rules()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[deadlines]\nmax_extension_working_days = 4\n", r"deadlines\.max_extension_working_days"),
        ("[deadlines]\nwindow_hours = 0\n", r"deadlines\.window_hours"),
        ("[deadlines]\ncountry = 'XX'\n", r"deadlines\.country: .*no calendar"),
        ("[deadlines]\ntimezone = 'Mars/Olympus'\n", r"deadlines\.timezone: .*unknown time zone"),
        (
            "[deadlines]\nextra_holidays = [2026-10-10]\nextra_working_days = [2026-10-10]\n",
            "both extra_holidays and extra_working_days: 2026-10-10",
        ),
        ("[deadlines]\nextra_holidays = ['not a date']\n", r"deadlines\.extra_holidays\[0\]"),
        ("[gaps]\nthreshold_minutes = 0\n", r"gaps\.threshold_minutes"),
        ("[clock]\ndrift_alarm_seconds = 0\n", r"clock\.drift_alarm_seconds"),
        ("[clock]\ndrift_alarm_seconds = inf\n", r"clock\.drift_alarm_seconds"),
        ("[retention]\nroutine_months = 5\n", r"retention\.routine_months"),
        ("[retention]\nstandard_years = 2\n", r"retention\.standard_years"),
        ("[retention]\nnotice_days = 0\n", r"retention\.notice_days"),
        ("[retention]\nlong_term_tags = []\n", r"retention\.long_term_tags: .*at least one tag"),
        ("[retention]\nlong_term_tags = ['  ']\n", r"retention\.long_term_tags"),
        ("[retention]\npurge_now = true\n", r"retention\.purge_now: unknown key"),
    ],
)
def test_impossible_values_are_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)
