# Before any metric exists: prometheus_client multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set.
from iiot.observability.multiprocess import configure as _configure_metrics

_configure_metrics()

from iiot.celery import app as celery_app  # noqa: E402

__all__ = ["celery_app"]
