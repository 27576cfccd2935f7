// Live counters over server-sent events. Values are written with textContent, never as HTML.
"use strict";
(function () {
  // Only the overview has live counters.
  if (!document.getElementById("live-section")) return;
  const state = document.getElementById("live-state");
  const show = (key, value) => {
    const el = document.getElementById("c-" + key);
    if (!el) return;
    if (value === null || value === undefined) el.textContent = "—";
    else if (key === "match_rate") el.textContent = (value * 100).toFixed(1) + "%";
    else el.textContent = String(value);
  };
  const source = new EventSource("/dashboard/live");
  source.addEventListener("counters", (e) => {
    let data;
    try {
      data = JSON.parse(e.data);
    } catch {
      return;
    }
    for (const [key, value] of Object.entries(data)) show(key, value);
    if (state) state.textContent = " (live)";
    document.body.dataset.live = "on";
  });
  source.addEventListener("error", () => {
    if (state) state.textContent = " (reconnecting…)";
    document.body.dataset.live = "off";
  });
})();
