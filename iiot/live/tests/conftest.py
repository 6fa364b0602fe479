"""Fixtures for the live (WebSocket) tests: committed devices and sessions (the consumer reads them
from other threads), communicators on a tenant's host, the per-test-loop hub stopped after each test."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
import pytest_asyncio
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django_tenants.utils import schema_context

from conftest import ROLES


@dataclass
class LivePlant:
    profile_ids: dict[str, int]
    devices: dict[str, list]  # schema -> [Device]
    metric_ids: dict[str, dict[str, int]]  # schema -> name -> id
    sessions: dict[tuple[str, str], str]  # (schema, role) -> session key
    tokens: dict[tuple[str, str], str]  # (schema, role) -> JWT access token
    nobody_id: int = 0


def make_session(user) -> str:
    from importlib import import_module

    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    store.save()
    return store.session_key


@pytest.fixture(scope="module")
def live_plant(platform, django_db_blocker):
    from devices import services
    from devices.models import Device, DeviceProfile
    from telemetry.models import Metric

    tag = uuid.uuid4().hex[:6]
    plant = LivePlant(profile_ids={}, devices={}, metric_ids={}, sessions={}, tokens={})
    with django_db_blocker.unblock():
        for slug, count in (("alpha", 3), ("beta", 1)):
            with schema_context(slug):
                profile = services.create_profile(
                    actor=None, client=None, name=f"live-{tag}", metrics=[{"name": "temperature"}, {"name": "pressure"}]
                )
                plant.profile_ids[slug] = profile.pk
                plant.devices[slug] = [
                    services.create_device(actor=None, client=None, uid=f"live-{slug}-{tag}-{n}", name=f"Live {n}", profile=profile)
                    for n in range(count)
                ]
                plant.metric_ids[slug] = dict(Metric.objects.filter(name__in=["temperature", "pressure"]).values_list("name", "id"))
                if slug == "alpha":  # a user with no role: no permission at all
                    from accounts import services as account_services

                    nobody = account_services.create_user(actor=None, client=None, email=f"nobody-{tag}@alpha.example.com",
                                                          password="Correct-Horse-Battery-9", roles=[])  # fmt: skip
                    plant.sessions[(slug, "nobody")] = make_session(nobody)
                    plant.nobody_id = nobody.pk
                for role in ROLES:
                    plant.sessions[(slug, role)] = make_session(platform[slug].users[role])
                    plant.tokens[(slug, role)] = platform[slug].access_token(role)
    yield plant
    with django_db_blocker.unblock():
        for slug in plant.devices:
            with schema_context(slug):
                Device.objects.filter(pk__in=[d.pk for d in plant.devices[slug]]).delete()
                DeviceProfile.objects.filter(pk=plant.profile_ids[slug]).delete()
        with schema_context("alpha"):
            from accounts.models import User

            User.objects.filter(pk=plant.nobody_id).delete()


def communicator(host: str, *, session: str | None = None, token: str | None = None, query_token: str | None = None,
                 origin: str | None = None, subprotocols=None) -> WebsocketCommunicator:  # fmt: skip
    from iiot.asgi import application

    headers = [(b"host", host.encode())]
    if session:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode()))
    if origin:
        headers.append((b"origin", origin.encode()))
    path = "/ws/v1/live" + (f"?token={query_token}" if query_token else "")
    if token:
        subprotocols = ["bearer", token]
    return WebsocketCommunicator(application, path, headers=headers, subprotocols=subprotocols)


@pytest_asyncio.fixture
async def hub():
    from iiot.live.hub import get_hub

    live_hub = get_hub()
    yield live_hub
    await live_hub.stop()
    # database_sync_to_async's thread keeps its connection (CONN_MAX_AGE): close it, or the test
    # database cannot be dropped at the end of the session.
    from asgiref.sync import sync_to_async
    from django.db import connections

    await sync_to_async(connections.close_all)()
