/* The dashboards' WebSocket client for /ws/v1/live (protocol: docs/websocket.md).
   Authenticates with the session cookie; reconnects with backoff and re-sends its subscriptions;
   answers heartbeats. Usage: const live = IIoTLive.connect(); live.on("telemetry", fn);
   live.subscribe({stream: "telemetry", devices: [1, 2], rate: 2}). */
(function () {
  "use strict";

  if (window.htmx) {
    // Forms answered with 422/409 carry their errors: swap them in like a 200.
    htmx.config.responseHandling = [
      { code: "204", swap: false },
      { code: "[23]..", swap: true },
      { code: "409|422", swap: true },
      { code: "[45]..", swap: false, error: true },
      { code: "...", swap: false },
    ];
  }

  const FINAL_CODES = new Set([4401, 4403, 4404]);

  class LiveClient {
    constructor(url) {
      this.url = url;
      this.handlers = {};
      this.subscriptions = new Map(); // key -> subscribe message
      this.backoff = 500;
      this.open = false;
      this.indicator = document.getElementById("live-indicator");
      this.connect();
    }

    on(type, handler) {
      (this.handlers[type] = this.handlers[type] || []).push(handler);
      return this;
    }

    emit(type, message) {
      for (const handler of this.handlers[type] || []) {
        try { handler(message); } catch (err) { console.error(err); }
      }
    }

    send(message) {
      if (this.open) this.ws.send(JSON.stringify(message));
    }

    subscribe(message, key) {
      key = key || message.stream || "telemetry";
      this.subscriptions.set(key, message);
      this.send(Object.assign({ type: "subscribe" }, message));
    }

    unsubscribe(stream, key) {
      this.subscriptions.delete(key || stream);
      this.send({ type: "unsubscribe", stream: stream });
    }

    status(text, cls) {
      if (!this.indicator) return;
      this.indicator.textContent = text;
      this.indicator.className = "live-indicator " + (cls || "");
    }

    connect() {
      this.ws = new WebSocket(this.url);
      this.ws.onopen = () => {
        this.open = true;
        this.backoff = 500;
        this.status("live", "on");
        for (const message of this.subscriptions.values()) {
          this.send(Object.assign({ type: "subscribe" }, message));
        }
      };
      this.ws.onmessage = (event) => {
        let message;
        try { message = JSON.parse(event.data); } catch (err) { return; }
        if (message.type === "ping") this.send({ type: "pong" });
        this.emit(message.type, message);
      };
      this.ws.onclose = (event) => {
        this.open = false;
        if (FINAL_CODES.has(event.code)) {
          this.status("refused: " + (event.reason || event.code), "off");
          return;
        }
        this.status("reconnecting…", "off");
        setTimeout(() => this.connect(), this.backoff);
        this.backoff = Math.min(this.backoff * 2, 10000);
      };
    }
  }

  window.IIoTLive = {
    connect() {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      return new LiveClient(`${scheme}://${location.host}/ws/v1/live`);
    },
    format(value) {
      if (value === null || value === undefined) return "–";
      return Math.abs(value) >= 1000 ? value.toFixed(0) : String(Math.round(value * 100) / 100);
    },
  };
})();
