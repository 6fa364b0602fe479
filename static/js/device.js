/* Device page: one uPlot chart per metric. Range presets and drag-to-zoom query the telemetry API,
   which picks the resolution (raw, 1-minute or 1-hour rollups) for the range; live points are
   appended while a preset range (ending now) is shown. window.IIoTCharts exposes the charts. */
(function () {
  "use strict";
  const container = document.getElementById("charts");
  const head = document.getElementById("device-head");
  const deviceId = Number(head.dataset.device);
  const live = IIoTLive.connect();
  const RANGES = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800, "30d": 2592000 };
  const charts = {};
  window.IIoTCharts = charts;
  let view = { preset: "1h", start: null, end: null, live: true, source: "raw", bucket: null };
  let loading = 0;

  function width(figure) {
    return Math.max(260, figure.querySelector(".plot").clientWidth || figure.clientWidth || 300);
  }

  function makeChart(figure, metric) {
    const options = {
      width: width(figure),
      height: 180,
      legend: { show: false },
      cursor: { drag: { x: true, y: false, setScale: false } },
      scales: { x: { time: true } },
      axes: [{ stroke: "#5d6b7a" }, { stroke: "#5d6b7a", size: 50 }],
      series: [{}, { label: metric.name, stroke: "#0b6bcb", width: 1.5, spanGaps: false, points: { show: (u, si, i0, i1) => i1 - i0 < 60, size: 5 } }],
      hooks: {
        setSelect: [
          (u) => {
            if (u.select.width < 5) return;
            const start = u.posToVal(u.select.left, "x");
            const end = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
            zoom(start * 1000, end * 1000);
          },
        ],
      },
    };
    const chart = new uPlot(options, [[], []], figure.querySelector(".plot"));
    chart.over.addEventListener("dblclick", () => load(view.preset));
    return chart;
  }

  function setPressed(preset) {
    document.querySelectorAll(".presets button").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.range === preset)));
  }

  async function fetchRange(startMs, endMs) {
    const maxPoints = Math.min(2000, Math.max(200, Math.round(container.clientWidth || 600)));
    const params = new URLSearchParams({
      start: new Date(startMs).toISOString(),
      end: new Date(endMs).toISOString(),
      max_points: String(maxPoints),
    });
    const response = await fetch(`/api/v1/devices/${deviceId}/telemetry?${params}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`telemetry ${response.status}`);
    return response.json();
  }

  async function show(startMs, endMs, isLive) {
    const ticket = ++loading;
    let body;
    try {
      body = await fetchRange(startMs, endMs);
    } catch (err) {
      document.getElementById("chart-source").textContent = "could not load: " + err.message;
      return;
    }
    if (ticket !== loading) return; // a newer request won
    view = Object.assign(view, { start: startMs, end: endMs, live: isLive, source: body.source, bucket: body.bucket_seconds });
    const label = body.bucket_seconds ? `${body.source}, ${body.bucket_seconds} s buckets (${body.agg})` : "raw points";
    document.getElementById("chart-source").textContent = label;
    for (const series of body.series) {
      const chart = charts[series.metric];
      if (!chart) continue;
      const xs = [], ys = [];
      for (const [ts, value] of series.points) {
        xs.push((typeof ts === "number" ? ts : Date.parse(ts)) / 1000);
        ys.push(value);
      }
      chart.setData([xs, ys], false);
      chart.setScale("x", { min: startMs / 1000, max: endMs / 1000 });
    }
  }

  function load(preset) {
    view.preset = preset;
    setPressed(preset);
    const end = Date.now();
    return show(end - RANGES[preset] * 1000, end, true);
  }

  function zoom(startMs, endMs) {
    if (endMs - startMs < 1000) return;
    setPressed(null);
    show(startMs, endMs, false);
  }

  // Live values: the latest label always; the chart while a preset range ending now is shown.
  live.on("telemetry", (message) => {
    for (const update of message.updates) {
      if (update.device !== deviceId) continue;
      for (const [name, [ts, value]] of Object.entries(update.values)) {
        const figure = container.querySelector(`figure[data-metric="${CSS.escape(name)}"]`);
        if (figure) figure.querySelector("[data-latest]").textContent = IIoTLive.format(value);
        const chart = charts[name];
        if (!chart || !view.live) continue;
        const [xs, ys] = chart.data;
        const x = ts / 1000;
        if (xs.length && x <= xs[xs.length - 1]) continue;
        if (view.bucket && view.bucket > 60) continue; // coarse buckets: the next reload shows it
        xs.push(x);
        ys.push(value);
        const now = Date.now();
        const start = now - RANGES[view.preset] * 1000;
        while (xs.length && xs[0] < start / 1000) { xs.shift(); ys.shift(); }
        view.end = now;
        chart.setData([xs, ys], false);
        chart.setScale("x", { min: start / 1000, max: now / 1000 });
      }
    }
  });

  live.on("status", (message) => {
    for (const change of message.devices) {
      if (change.device !== deviceId) continue;
      const badge = head.querySelector("[data-status]");
      badge.textContent = change.status.charAt(0).toUpperCase() + change.status.slice(1);
      badge.className = `badge status-${change.status}`;
    }
  });

  live.on("alert", (message) => {
    const alert = (message.event || {}).alert || {};
    const tbody = document.getElementById("device-alert-rows");
    if (!tbody || alert.device_id !== deviceId) return;
    tbody.querySelector("tr.empty")?.remove();
    let row = tbody.querySelector(`tr[data-alert="${alert.id}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.alert = alert.id;
      tbody.prepend(row);
    }
    const cells = [
      new Date(alert.first_seen_at).toISOString().slice(0, 16).replace("T", " "),
      alert.rule_name || "–",
      alert.severity,
      alert.state,
    ];
    row.replaceChildren(...cells.map((text, i) => {
      const td = document.createElement("td");
      if (i >= 2) {
        const badge = document.createElement("span");
        badge.className = `badge ${i === 2 ? "sev" : "state"}-${text}`;
        badge.textContent = text;
        td.append(badge);
      } else td.textContent = text;
      return td;
    }));
  });

  if (container) {
    const metrics = JSON.parse(container.dataset.metrics || "[]");
    for (const metric of metrics) {
      const figure = container.querySelector(`figure[data-metric="${CSS.escape(metric.name)}"]`);
      if (figure) charts[metric.name] = makeChart(figure, metric);
    }
    document.querySelectorAll(".presets button").forEach((button) => button.addEventListener("click", () => load(button.dataset.range)));
    window.addEventListener("resize", () => {
      for (const figure of container.querySelectorAll("figure.chart")) {
        const chart = charts[figure.dataset.metric];
        if (chart) chart.setSize({ width: width(figure), height: 180 });
      }
    });
    load("1h");
    live.subscribe({ stream: "telemetry", devices: [deviceId], rate: 4 });
  }
  live.subscribe({ stream: "status", devices: [deviceId] });
  if (document.getElementById("device-alert-rows")) live.subscribe({ stream: "alerts", devices: [deviceId] });
})();
