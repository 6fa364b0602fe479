/* Rule form: draws the backtest preview (firings per time bucket) after htmx swaps it in. */
(function () {
  "use strict";
  document.body.addEventListener("htmx:afterSwap", (event) => {
    const target = event.detail.target;
    if (target.id !== "backtest") return;
    const plot = target.querySelector("[data-backtest]");
    if (!plot || !window.uPlot) return;
    const [xs, counts] = JSON.parse(plot.dataset.backtest);
    const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.8] }) : undefined;
    window.IIoTBacktest = new uPlot({
      width: Math.max(260, plot.clientWidth || 300),
      height: 160,
      legend: { show: false },
      scales: { x: { time: true } },
      series: [{}, { label: "firings", stroke: "#b42318", fill: "#b4231833", paths: bars, points: { show: false } }],
    }, [xs, counts], plot);
  });
})();
