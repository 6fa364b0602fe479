"""Platform settings, read from the environment (django-environ).

Every variable is documented with its default in `.env.example`. The defaults are safe for
production: DEBUG is off, SECRET_KEY must be set when DEBUG is off, and the secure-cookie/HSTS
posture is one flag (`IIOT_SECURE`).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
_env_file = env.str("IIOT_ENV_FILE", default=str(BASE_DIR / ".env"))
if Path(_env_file).is_file():
    environ.Env.read_env(_env_file)

DEBUG = env.bool("DEBUG", default=False)
_DEV_SECRET = "insecure-development-key-do-not-use-in-production"
SECRET_KEY = env.str("SECRET_KEY", default=_DEV_SECRET if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (see .env.example).")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", ".localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- Security posture -------------------------------------------------------------------------
IIOT_SECURE = env.bool("IIOT_SECURE", default=False)  # behind TLS: secure cookies, HSTS, redirect
SESSION_COOKIE_SECURE = IIOT_SECURE
CSRF_COOKIE_SECURE = IIOT_SECURE
SECURE_SSL_REDIRECT = IIOT_SECURE and env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000) if IIOT_SECURE else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = IIOT_SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if IIOT_SECURE else None
# Number of reverse proxies in front of the web process whose X-Forwarded-For is believed.
IIOT_TRUSTED_PROXIES = env.int("IIOT_TRUSTED_PROXIES", default=0)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- Applications -----------------------------------------------------------------------------
# Apps in both lists get their tables in the public schema (platform staff, platform audit)
# and in every tenant schema (tenant users, roles, tenant audit).
SHARED_APPS = [
    "django_tenants",
    "tenants",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "channels",
    "django_prometheus",
    "iiot.observability",
    "accounts",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "rest_framework_simplejwt.token_blacklist",
    "accounts",
    "devices",
    "telemetry",
    "rules",
    "alerting",
    "analytics",
]
INSTALLED_APPS = list(SHARED_APPS) + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenants.Tenant"
TENANT_DOMAIN_MODEL = "tenants.Domain"
PUBLIC_SCHEMA_NAME = "public"
# SET search_path once per connection and schema switch, not before every query (django-tenants
# re-issues it after a rollback or a savepoint rollback, which undo it): half the round trips.
TENANT_LIMIT_SET_CALLS = env.bool("TENANT_LIMIT_SET_CALLS", default=True)
PUBLIC_SCHEMA_URLCONF = "iiot.urls_public"
ROOT_URLCONF = "iiot.urls_tenant"
IIOT_PUBLIC_DOMAIN = env.str("IIOT_PUBLIC_DOMAIN", default="localhost")
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)

MIDDLEWARE = [
    # django-prometheus: Before first and After last, so request metrics time the whole stack.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "iiot.middleware.RequestIdMiddleware",
    "tenants.middleware.TenantMiddleware",
    "iiot.middleware.AccessLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "iiot.middleware.RequestBodyLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "tenants.middleware.SuspendedTenantMiddleware",
    "iiot.api.ratelimit.RateLimitHeadersMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.tenant",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "iiot.asgi.application"

# --- Data stores ------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/iiot")}
DATABASES["default"]["ENGINE"] = "django_tenants.postgresql_backend"
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"].setdefault("TEST", {})["NAME"] = env.str("TEST_DATABASE_NAME", default="test_iiot")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="iiot"),
        # Every cache key starts with the tenant's schema (DESIGN.md: keys start with the tenant).
        "KEY_FUNCTION": "django_tenants.cache.make_key",
        "REVERSE_KEY_FUNCTION": "django_tenants.cache.reverse_key",
    }
}
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [env.str("CHANNEL_LAYER_URL", default=REDIS_URL)], "capacity": 1000, "expiry": 30},
    }
}

# MQTT broker (Mosquitto with the dynamic security plugin): devices publish here, the ingest
# service subscribes, the platform manages device identities through the admin account.
# `make run` starts the platform's own broker on IIOT_MQTT_PORT (the system one keeps 1883).
IIOT_MQTT_PORT = env.int("IIOT_MQTT_PORT", default=1884)
MQTT_URL = env.str("MQTT_URL", default=f"mqtt://127.0.0.1:{IIOT_MQTT_PORT}")
# Where devices connect, as told in a credential response (defaults to MQTT_URL).
MQTT_DEVICE_URL = env.str("MQTT_DEVICE_URL", default="") or MQTT_URL
MQTT_ADMIN_USERNAME = env.str("MQTT_ADMIN_USERNAME", default="iiot-admin")
MQTT_ADMIN_PASSWORD = env.str("MQTT_ADMIN_PASSWORD", default="change-me-mqtt-admin-2026")
MQTT_SERVICE_USERNAME = env.str("MQTT_SERVICE_USERNAME", default="iiot-service")
MQTT_SERVICE_PASSWORD = env.str("MQTT_SERVICE_PASSWORD", default="change-me-mqtt-service-2026")
# Seconds to wait for the broker (connect, dynsec answer, PUBACK) before giving up.
MQTT_TIMEOUT_SECONDS = env.float("MQTT_TIMEOUT_SECONDS", default=5.0)
# Path of mosquitto_dynamic_security.so when it is not where Debian puts it.
MQTT_DYNSEC_PLUGIN = env.str("MQTT_DYNSEC_PLUGIN", default="")

# --- Ingest (manage.py ingest; telemetry/pipeline.py, telemetry/transports/) ----------------------
# Flush a tenant's batch when it holds this many points or its oldest point waited this long.
INGEST_BATCH_MAX_POINTS = env.int("INGEST_BATCH_MAX_POINTS", default=20_000)
INGEST_FLUSH_MS = env.int("INGEST_FLUSH_MS", default=150)
# Accepted timestamps: at most this far in the past / future of the receive time.
INGEST_MAX_PAST_S = env.int("INGEST_MAX_PAST_S", default=7 * 24 * 3600)
INGEST_MAX_FUTURE_S = env.int("INGEST_MAX_FUTURE_S", default=300)
INGEST_MAX_MESSAGE_BYTES = env.int("INGEST_MAX_MESSAGE_BYTES", default=256 * 1024)
INGEST_MAX_POINTS_PER_MESSAGE = env.int("INGEST_MAX_POINTS_PER_MESSAGE", default=10_000)
# Auto-registration stops creating catalogue metrics for a tenant beyond this many.
INGEST_MAX_METRICS_PER_TENANT = env.int("INGEST_MAX_METRICS_PER_TENANT", default=10_000)
# Dead letters kept per tenant (newest first) for GET /api/v1/ingest/rejections.
INGEST_DEAD_LETTERS = env.int("INGEST_DEAD_LETTERS", default=1000)
# Safety-net reload of each tenant's registry index (changes are also pushed through Redis).
INGEST_REGISTRY_REFRESH_S = env.float("INGEST_REGISTRY_REFRESH_S", default=30.0)
# MQTT session kept by the broker while an ingest process is away (its queued QoS 1 messages too).
INGEST_SESSION_EXPIRY_S = env.int("INGEST_SESSION_EXPIRY_S", default=7 * 24 * 3600)
# Receive maximum announced to the broker: QoS 1 messages in flight (unacknowledged) per process.
INGEST_RECEIVE_MAXIMUM = env.int("INGEST_RECEIVE_MAXIMUM", default=65535)
# Points held in memory (not yet written) beyond which the process stops reading the socket; they are
# kept as binary COPY rows, 42 bytes each (telemetry.storage.PointBuffer).
INGEST_MAX_PENDING_POINTS = env.int("INGEST_MAX_PENDING_POINTS", default=400_000)
# A device's last-seen time is written at most this often per ingest process (0: every batch).
INGEST_SEEN_INTERVAL_S = env.float("INGEST_SEEN_INTERVAL_S", default=5.0)
# Factories `() -> hook(schema, points) | None` the ingest service calls for each message's
# validated points as they arrive (streaming rules, live updates); see telemetry/transports/base.py.
INGEST_STREAMING_HOOKS: list[str] = ["rules.streaming.build_hook", "iiot.live.streaming.live_updates_hook"]

# --- Live updates (iiot/live/, docs/websocket.md) -----------------------------------------------
# Redis for the telemetry pub/sub (default: the channel layer's); one PUBLISH per tenant per tick.
LIVE_REDIS_URL = env.str("LIVE_REDIS_URL", default="") or CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]
LIVE_PUBLISH_MS = env.int("LIVE_PUBLISH_MS", default=25)
# Only devices some WebSocket client watches are published: a watch lasts this long unless renewed
# (web processes renew theirs every third of it); the ingest re-reads the watch sets this often.
LIVE_WATCH_TTL_S = env.float("LIVE_WATCH_TTL_S", default=30.0)
LIVE_WATCH_REFRESH_S = env.float("LIVE_WATCH_REFRESH_S", default=1.0)
# Telemetry frames per second per connection: default, and the most a client may ask for.
LIVE_DEFAULT_RATE = env.float("LIVE_DEFAULT_RATE", default=5.0)
LIVE_MAX_RATE = env.float("LIVE_MAX_RATE", default=10.0)
# A frame that waits longer than this to be sent (client not reading) closes the connection (4008).
LIVE_SEND_TIMEOUT_S = env.float("LIVE_SEND_TIMEOUT_S", default=10.0)
LIVE_MAX_QUEUED_EVENTS = env.int("LIVE_MAX_QUEUED_EVENTS", default=500)
LIVE_MAX_DEVICES_PER_CONNECTION = env.int("LIVE_MAX_DEVICES_PER_CONNECTION", default=5000)
LIVE_HEARTBEAT_S = env.float("LIVE_HEARTBEAT_S", default=20.0)

# --- Celery -----------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/1")
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="redis://127.0.0.1:6379/2")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # keep the structured (JSON) log handlers

# --- Telemetry storage and queries (telemetry/storage.py, telemetry/selectors.py) ----------------
# Days of partitions created ahead of today by Celery beat (hourly) and `manage.py telemetry_partitions`.
TELEMETRY_PARTITIONS_AHEAD_DAYS = env.int("TELEMETRY_PARTITIONS_AHEAD_DAYS", default=3)
# Closed hours are folded into the sealed hourly rollups (beat, every 5 min) once they are this old
# (seconds after the hour ends); until then the telemetry_rollup_1h view reads them from the minutes.
TELEMETRY_ROLLUP_SEAL_GRACE_S = env.float("TELEMETRY_ROLLUP_SEAL_GRACE_S", default=120.0)
# Beat schedule from settings (django-celery-beat's DatabaseScheduler syncs it into its tables).
CELERY_BEAT_SCHEDULE = {
    "telemetry-partitions-ahead": {"task": "telemetry.ensure_partitions_ahead", "schedule": 3600.0},
    "telemetry-seal-rollups": {"task": "telemetry.seal_rollups", "schedule": 300.0},
}

# --- Rules (rules/streaming.py, rules/services.py) ---------------------------------------------
# Windowed rules (no data, rate of change, statistical, z-score): Celery beat evaluates every tenant this often.
RULES_WINDOW_INTERVAL_S = env.float("RULES_WINDOW_INTERVAL_S", default=5.0)
# Streaming rules in the ingest service: safety-net reload of each tenant's index (changes are pushed through Redis).
RULES_STREAMING_ENABLED = env.bool("RULES_STREAMING_ENABLED", default=True)
RULES_INDEX_REFRESH_S = env.float("RULES_INDEX_REFRESH_S", default=30.0)
# Threads per ingest process that carry out firing rules' actions (alerts, commands).
RULES_ACTION_WORKERS = env.int("RULES_ACTION_WORKERS", default=2)
# The ingest process's GIL switch interval while the rules hook runs (Python's default is 5 ms): the
# action threads' database round trips would otherwise wait up to that long for the busy event loop each.
RULES_SWITCH_INTERVAL_MS = env.float("RULES_SWITCH_INTERVAL_MS", default=1.0)
# Backtests read at most this many stored points.
RULES_BACKTEST_MAX_POINTS = env.int("RULES_BACKTEST_MAX_POINTS", default=500_000)

# --- Alerts and notifications (alerting/) ------------------------------------------------------
# Outgoing email (alert notifications): SMTP from the environment.
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", default=10.0)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="IIoT alerts <alerts@localhost>")
# Links in notifications: <scheme>://<tenant's primary domain>/...
ALERT_LINK_SCHEME = env.str("ALERT_LINK_SCHEME", default="https")
# Repeats of an open alert bump its count; its timeline notes them at most this often.
ALERT_REPEAT_EVENT_INTERVAL_S = env.int("ALERT_REPEAT_EVENT_INTERVAL_S", default=300)
# Retries of a failed notification (after the first attempt), backoff base * 2**retry seconds.
NOTIFICATION_MAX_RETRIES = env.int("NOTIFICATION_MAX_RETRIES", default=3)
NOTIFICATION_RETRY_BACKOFF_S = env.float("NOTIFICATION_RETRY_BACKOFF_S", default=2.0)
WEBHOOK_TIMEOUT_S = env.float("WEBHOOK_TIMEOUT_S", default=10.0)
WEBHOOK_MAX_PAYLOAD_BYTES = env.int("WEBHOOK_MAX_PAYLOAD_BYTES", default=1_048_576)
# At most one request per this many ms per webhook URL (and tenant); a send waits up to WEBHOOK_RATE_WAIT_S.
WEBHOOK_MIN_INTERVAL_MS = env.int("WEBHOOK_MIN_INTERVAL_MS", default=1000)
WEBHOOK_RATE_WAIT_S = env.float("WEBHOOK_RATE_WAIT_S", default=5.0)
# Lets webhooks reach loopback addresses (local test receivers). Never in production.
WEBHOOK_ALLOW_LOOPBACK = env.bool("WEBHOOK_ALLOW_LOOPBACK", default=False)
# CA bundle (PEM) webhook certificates are verified against; empty: the system's trust store.
WEBHOOK_CA_BUNDLE = env.str("WEBHOOK_CA_BUNDLE", default="")

# --- Auth -------------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": env.int("PASSWORD_MIN_LENGTH", default=10)},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- API --------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.TenantJWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated", "accounts.api.permissions.HasPermission"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "iiot.api.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
        "rest_framework.filters.SearchFilter",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["iiot.api.ratelimit.GroupRateThrottle"],
    "EXCEPTION_HANDLER": "iiot.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "iiot.api.schema.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

SPECTACULAR_SETTINGS = {
    "TITLE": "IIoT Platform API",
    "DESCRIPTION": (
        "Multi-tenant industrial IoT platform. Call the API on your tenant's host "
        "(e.g. `demo.localhost`); authenticate with `POST /api/v1/auth/login` and send "
        "`Authorization: Bearer <access>`. Errors share one shape: "
        '`{"error": {"status", "code", "message", "fields"}, "request_id"}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "DeviceStatusEnum": "devices.models.DeviceStatus",
        "CredentialStatusEnum": "devices.models.CredentialStatus",
        "CommandStatusEnum": "devices.models.CommandStatus",
        "SeverityEnum": "alerting.choices.Severity",
        "AlertStateEnum": "alerting.models.AlertState",
        "AlertEventKindEnum": "alerting.models.AlertEventKind",
        "ChannelKindEnum": "alerting.models.ChannelKind",
        "DeliveryStatusEnum": "alerting.models.DeliveryStatus",
    },
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=7)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": True,
    "ALGORITHM": "HS256",
    "SIGNING_KEY": env.str("JWT_SIGNING_KEY", default=SECRET_KEY),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
}

# Request body limit for the API (bytes): larger bodies get 413 with the error shape.
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=1_048_576)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES

# --- Rate limits (django-ratelimit on the Redis cache) ------------------------------------------
RATELIMIT_ENABLE = env.bool("RATELIMIT_ENABLE", default=True)
RATELIMIT_USE_CACHE = "default"
RATE_LIMITS = {
    "login": env.str("RATE_LIMIT_LOGIN", default="5/m"),  # per IP and per username
    "analytics": env.str("RATE_LIMIT_ANALYTICS", default="30/m"),
    "devices": env.str("RATE_LIMIT_DEVICES", default="100/m"),
    "telemetry": env.str("RATE_LIMIT_TELEMETRY", default="200/m"),
    "default": env.str("RATE_LIMIT_DEFAULT", default="600/m"),
}
# Seconds an analytics result stays in the Redis cache (newer data invalidates it sooner); 0 = off.
ANALYTICS_CACHE_TTL = env.int("ANALYTICS_CACHE_TTL", default=30)

# --- Metrics (GET /metrics; iiot/observability/) --------------------------------------------------
# Refused to everyone unless at least one is set; when both are, a scrape needs both.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")  # Authorization: Bearer <token>
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=[])  # CIDRs, e.g. 10.0.0.0/8,127.0.0.1/32
# Seconds the per-tenant telemetry storage figures (partitions, bytes) are reused between scrapes.
METRICS_STORAGE_CACHE_SECONDS = env.float("METRICS_STORAGE_CACHE_SECONDS", default=30.0)

# --- Readiness --------------------------------------------------------------------------------
READINESS_TIMEOUT_SECONDS = env.float("READINESS_TIMEOUT_SECONDS", default=2.0)

# --- i18n / static ----------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Front-end packages from npm (package.json; `npm ci` in `make run` and .ci/run), served as static files.
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/htmx", BASE_DIR / "node_modules" / "htmx.org" / "dist"),
    ("vendor/uplot", BASE_DIR / "node_modules" / "uplot" / "dist"),
]
# Hashed, compressed static files (needs `collectstatic`); off in development and tests.
IIOT_STATIC_MANIFEST = env.bool("IIOT_STATIC_MANIFEST", default=not DEBUG)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if IIOT_STATIC_MANIFEST
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not IIOT_STATIC_MANIFEST

# --- Platform bootstrap (make run) ------------------------------------------------------------
IIOT_ADMIN_EMAIL = env.str("IIOT_ADMIN_EMAIL", default="admin@example.com")
IIOT_ADMIN_PASSWORD = env.str("IIOT_ADMIN_PASSWORD", default="change-me-admin-2026")
IIOT_DEMO_ADMIN_EMAIL = env.str("IIOT_DEMO_ADMIN_EMAIL", default="admin@demo.example.com")
IIOT_DEMO_ADMIN_PASSWORD = env.str("IIOT_DEMO_ADMIN_PASSWORD", default="change-me-demo-2026")

# --- Logging ----------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FILE = env.str("LOG_FILE", default="")
LOG_FORMAT = env.str("LOG_FORMAT", default="json")  # json | text
_handlers = ["console"]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "iiot.request_context.RequestContextFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(tenant)s %(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        },
    },
    "root": {"handlers": _handlers, "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "django.server": {"level": "WARNING"},
        "uvicorn.access": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},  # "task received": one line per beat tick is noise
    },
}
if LOG_FILE:
    LOGGING["handlers"]["file"] = {
        "class": "logging.handlers.RotatingFileHandler",
        "filename": LOG_FILE,
        "maxBytes": 10 * 1024 * 1024,
        "backupCount": 5,
        "formatter": "json",
        "filters": ["context"],
    }
    _handlers.append("file")
