"""Bulk writes send no model signals: the services announce registry changes to ingest themselves."""

import time

import pytest
from django_tenants.utils import schema_context

from devices import services
from devices.tests.conftest import make_device, make_profile
from telemetry.registry import registry_channel
from telemetry.storage import redis_client

pytestmark = pytest.mark.django_db


def _messages(pubsub, wait_s=2.0):
    deadline = time.monotonic() + wait_s
    seen = []
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            seen.append(message["channel"].decode())
            break
    return seen


def test_disabling_devices_announces_a_registry_change(alpha, django_capture_on_commit_callbacks):
    pubsub = redis_client().pubsub()
    pubsub.subscribe(registry_channel("alpha"))
    try:
        with schema_context("alpha"):
            device = make_device("alpha", profile=make_profile("alpha"))
            _messages(pubsub, 0.3)  # drain what creating them announced
            with django_capture_on_commit_callbacks(execute=True):
                assert services.disable_devices(actor=None, client=None, devices=[device]) == 1
        assert _messages(pubsub) == [registry_channel("alpha")]
    finally:
        pubsub.close()
