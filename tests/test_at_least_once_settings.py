"""At-least-once's settings and pure pieces, no server: the mode and its two JetStream settings, the ack subject a
delivery's count and sequence are read from, the duplicate window, the consumer's delivery limit."""

from __future__ import annotations

import pytest
from test_config import KRE_V1_ENV

from krt_runner.config import load_settings
from krt_runner.entrypoint.settings import load_entrypoint_settings
from krt_runner.errors import ConfigError
from krt_runner.node.jetstream import consumer_max_deliver, duplicate_window
from krt_runner.node.js_pipeline import _delivery_numbers


def test_delivery_is_at_most_once_by_default_with_an_ack_wait_of_10s_and_5_deliveries():
    # 10 s: a request a killed replica held is delivered again well within a requester's default 30 s timeout
    settings = load_settings(KRE_V1_ENV)

    assert settings.delivery == "at-most-once" and not settings.at_least_once
    assert (settings.jetstream_ack_wait, settings.jetstream_max_deliver) == (10.0, 5)


def test_the_jetstream_settings_come_from_their_variables_and_flags():
    env = {**KRE_V1_ENV, "KRT_DELIVERY": "At-Least-Once", "KRT_JETSTREAM_ACK_WAIT": "2.5"}

    settings = load_settings(env, overrides={"jetstream_max_deliver": "3"})

    assert settings.at_least_once and settings.delivery == "at-least-once"
    assert (settings.jetstream_ack_wait, settings.jetstream_max_deliver) == (2.5, 3)
    assert settings.describe(changed_only=True)["delivery"] == "at-least-once"


def test_invalid_jetstream_settings_are_all_reported_at_once():
    env = {**KRE_V1_ENV, "KRT_DELIVERY": "exactly-once", "KRT_JETSTREAM_ACK_WAIT": "0",
           "KRT_JETSTREAM_MAX_DELIVER": "0"}

    with pytest.raises(ConfigError) as caught:
        load_settings(env)

    text = str(caught.value)
    assert "KRT_DELIVERY (--delivery)='exactly-once' is invalid: must be one of at-most-once, at-least-once" in text
    assert "KRT_JETSTREAM_ACK_WAIT (--jetstream-ack-wait)='0' is invalid" in text
    assert "KRT_JETSTREAM_MAX_DELIVER (--jetstream-max-deliver)='0' is invalid" in text


def test_the_entrypoint_reads_krt_delivery_too():
    settings = load_entrypoint_settings({"KRT_NATS_SERVER": "nats://n:4222", "KRT_DELIVERY": "at-least-once"})

    assert settings.delivery == "at-least-once"
    assert load_entrypoint_settings({"KRT_NATS_SERVER": "nats://n:4222"}).delivery == "at-most-once"


@pytest.mark.parametrize(
    ("ack_subject", "expected"),
    [
        ("$JS.ACK.KRT_in.krt_in.3.1207.1190.1796314476536840730.4", (3, "1207")),
        ("$JS.ACK.hub.ACCHASH.KRT_in.krt_in.1.42.40.1796314476536840730.0.Xyz", (1, "42")),  # with a domain
        ("$JS.ACK._.ACCHASH.KRT_in.krt_in.7.9.8.1796314476536840730.0", (7, "9")),
    ],
)
def test_a_deliverys_count_and_stream_sequence_are_read_from_its_ack_subject(ack_subject, expected):
    assert _delivery_numbers(ack_subject) == expected


def test_the_duplicate_window_outlasts_every_redelivery_and_is_never_below_two_minutes():
    assert duplicate_window(ack_wait=30, max_deliver=5) == 30 * (consumer_max_deliver(5) + 1) == 210
    assert duplicate_window(ack_wait=1, max_deliver=5) == 120


def test_the_consumer_delivers_once_more_than_the_setting_the_last_time_only_to_answer_the_error():
    assert consumer_max_deliver(5) == 6


@pytest.mark.parametrize(
    ("variable", "raw", "reason"),
    [
        ("KRT_JETSTREAM_ACK_WAIT", "inf", "must be a finite number"),
        ("KRT_JETSTREAM_ACK_WAIT", "0.002", "must be a number of seconds from 0.1 to 86400"),
        ("KRT_JETSTREAM_ACK_WAIT", "1e12", "must be a number of seconds from 0.1 to 86400"),
        ("KRT_JETSTREAM_MAX_DELIVER", "1.5", "must be a whole number of at least 1 and at most 10000"),
        ("KRT_JETSTREAM_MAX_DELIVER", "100000000000", "must be a whole number of at least 1 and at most 10000"),
    ],
)
def test_jetstream_settings_out_of_the_range_jetstream_and_the_in_progress_notices_work_in_are_refused(
    variable, raw, reason
):
    with pytest.raises(ConfigError) as caught:
        load_settings({**KRE_V1_ENV, "KRT_DELIVERY": "at-least-once", variable: raw})

    assert f"={raw!r} is invalid: {reason}" in str(caught.value)


def test_the_jetstream_settings_bounds_are_accepted():
    settings = load_settings({**KRE_V1_ENV, "KRT_JETSTREAM_ACK_WAIT": "0.1", "KRT_JETSTREAM_MAX_DELIVER": "10000"})

    assert (settings.jetstream_ack_wait, settings.jetstream_max_deliver) == (0.1, 10000)


@pytest.mark.parametrize("variable", ["KRT_DRAIN_TIMEOUT", "KRT_HANDLER_TIMEOUT", "KRT_BATCH_MAX_WAIT_MS"])
def test_no_number_setting_takes_infinity_or_nan(variable):
    for raw in ("inf", "nan"):
        with pytest.raises(ConfigError) as caught:
            load_settings({**KRE_V1_ENV, variable: raw})

        assert f"={raw!r} is invalid: must be a finite number" in str(caught.value)
