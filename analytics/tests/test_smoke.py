import math
from datetime import timedelta

from analytics.tests.support import BASE, make_device, make_metric, series_points, write
from telemetry.tests import storage_support

clean_telemetry = storage_support.clean_telemetry


def test_smoke(clean_telemetry, alpha):
    device = make_device("alpha", metrics=("temperature", "humidity"))
    t = make_metric("alpha", "temperature", "C")
    h = make_metric("alpha", "humidity", "%")
    n = 3 * 3600
    write("alpha", series_points(device.pk, t.pk, range(n), [20 + math.sin(i / 300) + i * 1e-4 for i in range(n)]))
    write("alpha", series_points(device.pk, h.pk, [i + 0.3 for i in range(n)], [50 - math.sin(i / 300) for i in range(n)]))
    client = alpha.client("viewer")
    q = f"start={BASE.isoformat()}&end={(BASE + timedelta(hours=3)).isoformat()}".replace("+", "%2B")
    for path in (
        f"timeseries/{device.pk}/temperature?page_size=3&",
        f"trends/{device.pk}/temperature?",
        f"statistics/{device.pk}/temperature?",
        f"statistics/{device.pk}/temperature?resolution=1m&",
        f"correlation/{device.pk}?",
        f"forecast/{device.pk}/temperature?",
        f"forecast/{device.pk}/temperature?method=holt_winters&",
    ):
        r = client.get(f"/api/v1/analytics/{path}{q}")
        print(path, r.status_code, r.json())
