/* Alerts console: new alerts arrive live (the row is rendered by the server: GET /alerts/<id>/row),
   changed ones are refreshed in place. htmx sends the CSRF token with its POSTs (acknowledge, resolve). */
(function () {
  "use strict";
  const csrf = document.cookie.split("; ").find((c) => c.startsWith("csrftoken="));
  document.body.addEventListener("htmx:configRequest", (event) => {
    if (csrf) event.detail.headers["X-CSRFToken"] = csrf.split("=")[1];
  });
  const live = IIoTLive.connect();

  function listState() {
    return document.getElementById("alert-table")?.dataset.state || "open";
  }

  function matches(alert) {
    const state = listState();
    if (state === "all") return true;
    if (state === "open") return alert.state !== "resolved";
    return alert.state === state;
  }

  live.on("alert", (message) => {
    const alert = (message.event || {}).alert;
    if (!alert) return;
    const row = document.getElementById(`alert-${alert.id}`);
    const tbody = document.getElementById("alert-rows");
    if (row) {
      htmx.ajax("GET", `/alerts/${alert.id}/row`, { target: `#alert-${alert.id}`, swap: "outerHTML" });
    } else if (tbody && matches(alert)) {
      tbody.querySelector("tr.empty")?.remove();
      const slot = document.createElement("tr");
      slot.id = `alert-${alert.id}`;
      tbody.prepend(slot);
      htmx.ajax("GET", `/alerts/${alert.id}/row`, { target: `#alert-${alert.id}`, swap: "outerHTML" });
    }
  });
  live.subscribe({ stream: "alerts" });
})();
