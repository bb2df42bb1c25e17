// emlive live viewer page: receives contrast-mapped 8-bit frames over a WebSocket, draws the newest one per
// animation frame, acknowledges it (flow control: the server sends at most 2 unacknowledged frames).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const tokenQuery = token ? "token=" + encodeURIComponent(token) : "";
  const CHANNELS = ["raw", "denoised", "uncertainty"];
  // the channels' canvases, and "overlay": the map blended over the denoised frame (composed here, $("map-opacity"))
  const canvases = {
    raw: $("canvas-raw"), denoised: $("canvas-denoised"), uncertainty: $("canvas-uncertainty"), overlay: $("canvas-overlay"),
  };
  const contexts = {};
  for (const k of Object.keys(canvases)) contexts[k] = canvases[k].getContext("2d", { willReadFrequently: k === "uncertainty" });
  const images = { raw: null, denoised: null, uncertainty: null };
  const NO_MAP = "no uncertainty map in this stream (serve a head=gaussian model with --uncertainty)";
  let colormap = { hex: null, table: null }; // the uncertainty map's colours (index -> RGBA as one uint32)
  const state = {
    ws: null, clientId: null, backoff: 500, connected: false, paused: false,
    pending: null, shown: null, lastState: null, drawTimes: [], latencies: [],
    view: { scale: 1, x: 0, y: 0, fitted: false }, probeAt: 0,
  };
  // Figures for tests and the benchmark (read with page.evaluate).
  const stats = { drawMs: 0, frames: 0, lastIndex: null, lastAcquisition: null, latencies: [], drawn: [], errors: [] };
  window.emlive = { stats, state };

  const now = () => performance.timeOrigin + performance.now();

  // --- banner ------------------------------------------------------------------------------------------------
  function banner(text, level) {
    const el = $("banner");
    if (!text) { el.classList.add("hidden"); el.textContent = ""; return; }
    el.textContent = text;
    el.classList.remove("hidden");
    el.classList.toggle("warn", level === "warn");
  }

  // --- WebSocket with reconnection and backoff -----------------------------------------------------------------
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = proto + "//" + location.host + "/ws" + (tokenQuery ? "?" + tokenQuery : "");
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    ws.onopen = () => {
      state.connected = true;
      state.backoff = 500;
      banner("");
      sendSettings();
      if (state.paused) send({ type: "pause", paused: true });
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") onText(JSON.parse(ev.data));
      else onFrame(ev.data);
    };
    ws.onclose = () => {
      state.connected = false;
      const wait = state.backoff;
      state.backoff = Math.min(state.backoff * 2, 10000);
      banner("Viewer server unreachable: reconnecting in " + (wait / 1000).toFixed(1) + " s …");
      setTimeout(connect, wait);
    };
    ws.onerror = () => { /* onclose follows */ };
  }
  function send(obj) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(obj));
  }

  function onText(msg) {
    if (msg.type === "hello") {
      state.clientId = msg.client;
      $("source").textContent = msg.source;
      updateSaveLinks();
    } else if (msg.type === "state") {
      state.lastState = msg;
      showState(msg);
    } else if (msg.type === "probe") {
      showProbe(msg);
    } else if (msg.type === "error") {
      stats.errors.push(msg.error);
      banner(msg.error, "warn");
    }
  }

  // --- frames ------------------------------------------------------------------------------------------------
  function onFrame(buf) {
    const view = new DataView(buf);
    const headLen = view.getUint32(0, true);
    const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, headLen)));
    let offset = 4 + headLen;
    const parts = {};
    for (const ch of meta.channels) {
      parts[ch.kind] = new Uint8Array(buf, offset, ch.length);
      offset += ch.length;
    }
    meta.arrivedAt = now();
    if (state.pending) send({ type: "ack" }); // replaced before it was drawn: still frees its credit
    state.pending = { meta, parts };
    requestAnimationFrame(drawPending);
  }

  async function drawPending() {
    const item = state.pending;
    if (!item) return;
    state.pending = null;
    const { meta, parts } = item;
    const t0 = performance.now();
    try {
      for (const ch of meta.channels) {
        await drawChannel(ch, parts[ch.kind], meta.codec);
      }
    } catch (err) {
      stats.errors.push(String(err));
    }
    const drawnAt = now();
    const latency = drawnAt - meta.timestamp * 1000;
    const denoised = meta.channels.some((c) => c.kind === "denoised");
    send({ type: "ack", drawn_at: drawnAt / 1000, latency_ms: latency, denoised });
    stats.drawMs = (stats.drawMs || 0) * 0.9 + (performance.now() - t0) * 0.1;
    state.shown = meta;
    stats.frames += 1;
    stats.lastIndex = meta.index;
    stats.lastAcquisition = meta.acquisition;
    stats.latencies.push(latency);
    stats.drawn.push(drawnAt);
    if (stats.latencies.length > 5000) { stats.latencies.splice(0, 1000); stats.drawn.splice(0, 1000); }
    state.drawTimes.push(drawnAt);
    while (state.drawTimes.length && drawnAt - state.drawTimes[0] > 2000) state.drawTimes.shift();
    state.latencies.push(latency);
    if (state.latencies.length > 60) state.latencies.shift();
    for (const k of ["raw", "denoised"]) {
      if (!meta.channels.some((c) => c.kind === k)) setMissing(k, true);
    }
    showUncertainty(mapChannel(meta));
    if (!state.view.fitted) fitView();
    showFrameInfo(meta);
    drawHistogram(meta);
  }

  // the uncertainty map arrives as 8-bit indices on its own linear scale; the server sends the colour table
  function colourTable(hex) {
    if (colormap.hex !== hex) {
      const table = new Uint32Array(256);
      for (let i = 0; i < 256; i++) {
        const [r, g, b] = [0, 2, 4].map((o) => parseInt(hex.substr(i * 6 + o, 2), 16));
        table[i] = (0xff000000 | (b << 16) | (g << 8) | r) >>> 0;
      }
      colormap = { hex, table };
    }
    return colormap.table;
  }
  function mapChannel(meta) { return meta.channels.find((c) => c.kind === "uncertainty"); }

  // where the map goes: "beside" the denoised frame (its own panel), "overlay" (blended over it) or "none" (no map
  // in the stream, hidden, a layout without the denoised frame, or beside a split, which has no room beside it)
  function mapPlacement(ch) {
    const layout = $("layout").value, choice = $("map-display").value;
    if (!ch || choice === "off" || layout === "raw" || (layout === "split" && choice === "beside")) return "none";
    return choice;
  }
  function mapNote(ch) { // why the map is not shown, where mapPlacement says "none"
    if (!ch) return NO_MAP;
    const what = "uncertainty: " + (ch.quantity || "std") + " of the denoised frame";
    if (mapPlacement(ch) !== "none") return what;
    if ($("map-display").value === "off") return what + " (hidden)";
    if ($("layout").value === "raw") return what + ", shown with the denoised frame: choose a layout that shows it";
    return what + ": no room beside the split, choose 'over the denoised frame'";
  }
  function showUncertainty(ch) {
    const place = mapPlacement(ch), view = $("view-uncertainty");
    if (view.classList.contains("hidden") === (place === "beside")) { // appears or goes: the panels' sizes change
      view.classList.toggle("hidden", place !== "beside");
      state.view.fitted = false;
    }
    canvases.overlay.classList.toggle("hidden", place !== "overlay");
    const legendHome = place === "overlay" ? $("view-denoised") : view; // the legend goes where the map is
    if ($("legend").parentElement !== legendHome) legendHome.appendChild($("legend"));
    if (place === "overlay") composeOverlay();
    $("uncertainty-note").textContent = mapNote(ch);
    if (!ch) return;
    $("legend-lo").textContent = fmtNum(ch.min);
    $("legend-hi").textContent = fmtNum(ch.max);
    $("legend-units").textContent = (ch.quantity || "std") + " in " + (ch.units || "the input's units");
    const bar = $("legend-bar"), ctx = bar.getContext("2d"), table = colourTable(ch.colormap);
    const image = ctx.createImageData(256, 1);
    new Uint32Array(image.data.buffer).set(table);
    ctx.putImageData(image, 0, 0);
  }
  // the overlay: the denoised frame, then the coloured map over it at the chosen opacity (0: the denoised frame as
  // drawn; 1: the map alone), from the two canvases as drawn (no second trip to the server)
  function mapOpacity() { return Math.min(100, Math.max(0, parseFloat($("map-opacity").value) || 0)) / 100; }
  function composeOverlay() {
    const out = canvases.overlay, den = canvases.denoised, ctx = contexts.overlay;
    if (out.width !== den.width || out.height !== den.height) { out.width = den.width; out.height = den.height; }
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = 1;
    ctx.drawImage(den, 0, 0);
    ctx.globalAlpha = mapOpacity();
    ctx.drawImage(canvases.uncertainty, 0, 0, out.width, out.height);
  }

  async function drawChannel(ch, bytes, codec) {
    const canvas = canvases[ch.kind];
    if (ch.kind !== "uncertainty") setMissing(ch.kind, false);
    if (canvas.width !== ch.width || canvas.height !== ch.height) {
      canvas.width = ch.width; canvas.height = ch.height; state.view.fitted = false;
    }
    const ctx = contexts[ch.kind];
    if (codec === "raw8") {
      // one ImageData per channel and size, reused (not a new 1 MiB buffer per frame for the garbage collector)
      let image = images[ch.kind];
      if (!image || image.width !== ch.width || image.height !== ch.height) {
        image = images[ch.kind] = ctx.createImageData(ch.width, ch.height);
      }
      const out = new Uint32Array(image.data.buffer);
      const n = ch.width * ch.height;
      if (ch.colormap) {
        const table = colourTable(ch.colormap);
        for (let i = 0; i < n; i++) out[i] = table[bytes[i]];
      } else {
        for (let i = 0; i < n; i++) out[i] = 0xff000000 | (bytes[i] * 0x010101);
      }
      ctx.putImageData(image, 0, 0);
    } else {
      const bitmap = await createImageBitmap(new Blob([bytes], { type: codec === "jpeg" ? "image/jpeg" : "image/png" }));
      ctx.drawImage(bitmap, 0, 0);
      bitmap.close();
      if (ch.colormap) { // grey decoded: colour it through the table
        const table = colourTable(ch.colormap), image = ctx.getImageData(0, 0, ch.width, ch.height);
        const px = new Uint32Array(image.data.buffer);
        for (let i = 0; i < px.length; i++) px[i] = table[px[i] & 0xff];
        ctx.putImageData(image, 0, 0);
      }
    }
  }

  function setMissing(kind, missing) {
    const label = document.querySelector("#view-" + kind + " .label");
    label.textContent = missing ? kind + " — not published (start emlive serve with --publish-raw)" : kind;
  }

  // --- zoom and pan, the same for both views ---------------------------------------------------------------
  function applyView() {
    const v = state.view;
    const t = "translate(" + v.x + "px," + v.y + "px) scale(" + v.scale + ")";
    for (const canvas of Object.values(canvases)) canvas.style.transform = t;
  }
  function fitView() {
    const vp = document.querySelector("#view-raw .viewport").getBoundingClientRect().width
      ? document.querySelector("#view-raw .viewport") : document.querySelector("#view-denoised .viewport");
    const r = vp.getBoundingClientRect();
    const c = canvases.denoised.width > 1 ? canvases.denoised : canvases.raw;
    const s = Math.min(r.width / c.width, r.height / c.height) || 1;
    state.view = { scale: s, x: (r.width - c.width * s) / 2, y: (r.height - c.height * s) / 2, fitted: true };
    applyView();
  }
  function framePoint(canvas, ev) {
    const r = canvas.getBoundingClientRect();
    const f = (state.shown && state.shown.factor) || 1;
    return {
      x: Math.floor(((ev.clientX - r.left) / r.width) * canvas.width * f),
      y: Math.floor(((ev.clientY - r.top) / r.height) * canvas.height * f),
    };
  }
  for (const vp of document.querySelectorAll(".viewport")) {
    let drag = null;
    vp.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = vp.getBoundingClientRect();
      const mx = ev.clientX - r.left, my = ev.clientY - r.top;
      const k = Math.exp(-ev.deltaY * 0.0015);
      const v = state.view;
      const scale = Math.min(64, Math.max(0.05, v.scale * k));
      v.x = mx - ((mx - v.x) * scale) / v.scale;
      v.y = my - ((my - v.y) * scale) / v.scale;
      v.scale = scale;
      applyView();
    }, { passive: false });
    vp.addEventListener("pointerdown", (ev) => { drag = { x: ev.clientX, y: ev.clientY }; vp.setPointerCapture(ev.pointerId); });
    vp.addEventListener("pointerup", () => { drag = null; });
    vp.addEventListener("pointermove", (ev) => {
      if (drag) {
        state.view.x += ev.clientX - drag.x; state.view.y += ev.clientY - drag.y;
        drag = { x: ev.clientX, y: ev.clientY };
        applyView();
      }
      const t = performance.now();
      if (t - state.probeAt > 50) {
        state.probeAt = t;
        const canvas = ev.currentTarget.querySelector("canvas");
        if (canvas) {
          const p = framePoint(canvas, ev);
          send({ type: "probe", x: p.x, y: p.y });
        }
      }
    });
    vp.addEventListener("dblclick", fitView);
  }
  function showProbe(msg) {
    const fmt = (v) => (v === undefined ? "–" : Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(3) : v.toFixed(3));
    if (msg.raw === undefined && msg.denoised === undefined) { $("probe").textContent = "outside the frame"; return; }
    $("probe").textContent = "x " + msg.x + ", y " + msg.y + "   raw " + fmt(msg.raw) + "   denoised " + fmt(msg.denoised) +
      (msg.uncertainty === undefined ? "" : " ± " + fmt(msg.uncertainty));
  }

  // --- controls ------------------------------------------------------------------------------------------------
  function gammaValue() { return Math.pow(10, parseFloat($("gamma").value)); }
  function sendSettings() {
    const num = (id) => parseFloat($(id).value);
    const settings = {
      type: "settings", mode: $("mode").value, plow: num("plow"), phigh: num("phigh"),
      vmin: num("vmin"), vmax: num("vmax"), gamma: gammaValue(), codec: $("codec").value,
    };
    for (const k of ["plow", "phigh", "vmin", "vmax"]) if (!Number.isFinite(settings[k])) return;
    $("gamma-value").textContent = settings.gamma.toFixed(2);
    send(settings);
  }
  if (["raw8", "jpeg", "png"].includes(params.get("codec"))) $("codec").value = params.get("codec");
  for (const id of ["mode", "plow", "phigh", "vmin", "vmax", "gamma", "codec"]) {
    $(id).addEventListener("input", sendSettings);
    $(id).addEventListener("change", sendSettings);
  }
  $("mode").addEventListener("change", () => {
    // switching to manual starts from the limits shown, so the picture does not jump
    if ($("mode").value === "manual" && state.shown) {
      const pictures = state.shown.channels.filter((c) => c.kind !== "uncertainty"); // the map has its own scale
      const ch = pictures[pictures.length - 1];
      $("vmin").value = +ch.min.toPrecision(6); $("vmax").value = +ch.max.toPrecision(6);
      sendSettings();
    }
  });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    send({ type: "pause", paused: state.paused });
  });
  $("reset-view").addEventListener("click", fitView);
  function mapControlsChanged() {
    $("map-opacity-row").classList.toggle("hidden", $("map-display").value !== "overlay");
    $("map-opacity-value").textContent = Math.round(mapOpacity() * 100) + "%";
    if (!state.shown) return;
    showUncertainty(mapChannel(state.shown));
    if (!state.view.fitted) fitView();
  }
  mapControlsChanged(); // a reload may have restored the form's choices
  $("map-display").addEventListener("change", mapControlsChanged);
  $("map-opacity").addEventListener("input", mapControlsChanged);
  $("layout").addEventListener("change", () => {
    const layout = $("layout").value;
    $("views").className = "views " + layout;
    $("split").classList.toggle("hidden", layout !== "split");
    applySplit();
    mapControlsChanged();
    fitView();
  });
  function applySplit() {
    const vp = document.querySelector("#view-denoised .viewport");
    vp.style.clipPath = $("layout").value === "split" ? "inset(0 0 0 " + $("split").value + "%)" : "";
  }
  $("split").addEventListener("input", applySplit);
  window.addEventListener("resize", () => { if (state.view.fitted) fitView(); });

  function updateSaveLinks() {
    const q = (fmt) => "api/save?format=" + fmt + (state.clientId ? "&client=" + state.clientId : "") + (tokenQuery ? "&" + tokenQuery : "");
    $("save-tiff").href = q("tiff");
    $("save-png").href = q("png");
  }

  // --- figures -----------------------------------------------------------------------------------------------
  function pct(list, p) {
    if (!list.length) return NaN;
    const s = [...list].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
  }
  function showFrameInfo(meta) {
    const ch = meta.channels.map((c) => c.kind + " " + fmtNum(c.min) + "…" + fmtNum(c.max)).join("  ");
    $("limits").textContent = ch + "  γ " + meta.gamma.toFixed(2);
  }
  function fmtNum(v) { return v === null || v === undefined ? "–" : Math.abs(v) >= 1e4 ? v.toExponential(2) : (+v.toPrecision(4)).toString(); }
  function drawHistogram(meta) {
    const canvas = $("hist"), ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const colors = { raw: "rgba(120,160,255,0.7)", denoised: "rgba(255,180,80,0.8)" };
    for (const ch of meta.channels) {
      if (!colors[ch.kind]) continue; // the uncertainty map has its own scale (its legend)
      const h = ch.hist, n = h.counts.length, max = Math.max(...h.counts.map((c) => Math.log1p(c))) || 1;
      ctx.fillStyle = colors[ch.kind];
      for (let i = 0; i < n; i++) {
        const bh = (Math.log1p(h.counts[i]) / max) * canvas.height;
        ctx.fillRect((i / n) * canvas.width, canvas.height - bh, canvas.width / n, bh);
      }
      ctx.strokeStyle = colors[ch.kind];
      for (const v of [ch.min, ch.max]) {
        const x = ((v - h.lo) / (h.hi - h.lo)) * canvas.width;
        ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, canvas.height); ctx.stroke();
      }
    }
  }
  function showState(msg) {
    const fps = state.drawTimes.length > 1 ? (state.drawTimes.length - 1) / ((state.drawTimes[state.drawTimes.length - 1] - state.drawTimes[0]) / 1000) : 0;
    const st = msg.status || {};
    const rx = (st.stages && st.stages.receive) || {};
    const model = st.model || {};
    const counters = st.counters || {};
    const lat = (st.latency && st.latency.processing) || {};
    const l50 = pct(state.latencies, 50);
    $("figures").textContent = (state.paused ? "PAUSED  " : "") + "input " + (rx.rate_hz !== undefined ? rx.rate_hz.toFixed(1) : "–") +
      " fps · shown " + fps.toFixed(1) + " fps · latency " + (Number.isFinite(l50) ? l50.toFixed(0) + " ms" : "–");
    const shown = state.shown || {};
    const rows = [
      ["model", model.name || shown.model], ["backend", [model.backend || shown.backend, model.device].filter(Boolean).join(" / ") || undefined],
      ["frames (N)", model.frames], ["blind spot", model.blind_spot ? model.blind_spot.join("×") : undefined],
      ["input fps", rx.rate_hz !== undefined ? rx.rate_hz.toFixed(1) : undefined], ["displayed fps", fps.toFixed(1)],
      ["service latency p50", lat.p50_ms !== undefined ? lat.p50_ms.toFixed(1) + " ms" : undefined],
      ["browser latency p50", Number.isFinite(l50) ? l50.toFixed(0) + " ms" : undefined],
      ["skipped (service)", counters.skipped], ["skipped (viewer)", msg.viewer.skipped],
      ["frame", state.shown ? state.shown.acquisition + " #" + state.shown.index : undefined],
    ];
    $("service").replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v === undefined || v === null ? "–" : String(v);
      return [dt, dd];
    }));
    if (msg.never) banner("Waiting for frames from " + msg.source + " — is emlive serve running and publishing there?");
    else if (msg.stale) banner("Stream stopped: no frame from " + msg.source + " for " + msg.frame_age_s.toFixed(0) + " s (service unreachable or acquisition ended).");
    else if (msg.status_stale) banner("No status from " + msg.status_address + " — live figures are not updating.", "warn");
    else banner("");
  }

  connect();
})();
