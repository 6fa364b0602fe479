/* Fleet overview: sparklines from the page's data, then live values, status and alert counts. */
(function () {
  "use strict";
  const SPARK_MINUTES = 60;
  const live = IIoTLive.connect();
  let sparkMinute = Math.floor(Date.now() / 60000);

  function drawSpark(svg) {
    const values = JSON.parse(svg.dataset.spark || "[]");
    const line = svg.querySelector("polyline");
    const known = values.filter((v) => v !== null);
    if (!known.length) { line.setAttribute("points", ""); return; }
    const lo = Math.min(...known), hi = Math.max(...known), span = hi - lo || 1;
    const step = 120 / Math.max(values.length - 1, 1);
    const points = [];
    values.forEach((v, i) => {
      if (v !== null) points.push(`${(i * step).toFixed(1)},${(26 - ((v - lo) / span) * 24).toFixed(1)}`);
    });
    line.setAttribute("points", points.join(" "));
  }

  function rows() {
    return Array.from(document.querySelectorAll("#fleet-table tr.device-row"));
  }

  function rowFor(id) {
    return document.querySelector(`#fleet-table tr.device-row[data-device="${id}"]`);
  }

  function subscribeRows() {
    const ids = rows().map((row) => Number(row.dataset.device));
    document.querySelectorAll("#fleet-table svg.spark").forEach(drawSpark);
    sparkMinute = Math.floor(Date.now() / 60000);
    if (ids.length) live.subscribe({ stream: "telemetry", devices: ids, rate: 1 });
    else live.unsubscribe("telemetry");
  }

  live.on("telemetry", (message) => {
    for (const update of message.updates) {
      const row = rowFor(update.device);
      if (!row) continue;
      for (const [name, [ts, value]] of Object.entries(update.values)) {
        const cell = row.querySelector(`[data-metric="${CSS.escape(name)}"] [data-value]`);
        if (cell) cell.textContent = IIoTLive.format(value);
        const svg = row.querySelector(`svg.spark[data-metric="${CSS.escape(name)}"]`);
        if (svg) {
          const values = JSON.parse(svg.dataset.spark || "[]");
          const minute = Math.floor(ts / 60000);
          while (minute > sparkMinute) { values.push(null); values.shift(); sparkMinute += 1; }
          if (!values.length) values.push(null);
          values[values.length - 1] = value;
          while (values.length > SPARK_MINUTES) values.shift();
          svg.dataset.spark = JSON.stringify(values);
          drawSpark(svg);
        }
      }
      row.classList.add("flash");
      setTimeout(() => row.classList.remove("flash"), 400);
    }
  });

  live.on("status", (message) => {
    for (const change of message.devices) {
      const badge = rowFor(change.device)?.querySelector("[data-status]");
      if (badge) {
        badge.textContent = change.status.charAt(0).toUpperCase() + change.status.slice(1);
        badge.className = `badge status-${change.status}`;
      }
    }
  });

  live.on("alert", (message) => {
    const alert = (message.event || {}).alert || {};
    const cell = rowFor(alert.device_id)?.querySelector("[data-alerts]");
    if (!cell) return;
    let count = Number(cell.textContent) || 0;
    if (message.event.kind === "triggered") count += 1;
    if (message.event.kind === "resolved" || message.event.kind === "auto_resolved") count = Math.max(0, count - 1);
    cell.textContent = String(count);
    cell.classList.toggle("has-alerts", count > 0);
  });

  subscribeRows();
  live.subscribe({ stream: "status" });
  if (document.querySelector("[data-alerts]")) live.subscribe({ stream: "alerts" });
  document.body.addEventListener("htmx:afterSwap", (event) => {
    if (event.detail.target.id === "fleet-rows") subscribeRows();
  });
})();
