"""The JetStream names of a node's input subject: valid, stable, and distinct for distinct subjects."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from krt_runner.jetstream_names import consumer_name, stream_name

VALID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def test_a_plain_subject_keeps_its_name_under_a_prefix():
    assert stream_name("greeter-v1-Greet-entrypoint") == "KRT_greeter-v1-Greet-entrypoint"
    assert consumer_name("greeter-v1-Greet-entrypoint") == "krt_greeter-v1-Greet-entrypoint"


def test_subjects_that_differ_only_in_unsafe_characters_get_different_names():
    assert stream_name("a.b") != stream_name("a_b") and consumer_name("a.*") != consumer_name("a.>")


@given(st.text(min_size=1, max_size=300))
def test_every_name_is_valid_for_jetstream_and_the_same_each_time(subject):
    for make in (stream_name, consumer_name):
        assert VALID.match(make(subject)) and make(subject) == make(subject)
