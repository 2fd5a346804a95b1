// Small time-series charts for the State page, drawn by the page itself as inline SVG (no
// library, nothing from a CDN). Samples live in memory only, for `WINDOW_MS`, so a page left on
// State shows the last few minutes, and coming back to State shows what was sampled meanwhile
// (the samples are kept while the UI is open, whichever page shows).

/** How long samples are kept (and how much a chart shows). */
export const WINDOW_MS = 5 * 60 * 1000;
/** At most this many samples per series (a 2 s poll over 5 minutes is 150): bounds memory if the
 * poll runs faster than expected. */
const MAX_SAMPLES = 600;

/** One series: `{t, v}` samples, `t` in ms (any clock, the same for all), oldest first. */
export class Series {
  constructor(windowMs = WINDOW_MS) {
    this.windowMs = windowMs;
    this.samples = [];
  }
  add(t, v) {
    if (v == null || !Number.isFinite(v)) return;
    this.samples.push({ t, v });
    const from = t - this.windowMs;
    while (this.samples.length && (this.samples[0].t < from || this.samples.length > MAX_SAMPLES)) this.samples.shift();
  }
  get last() {
    return this.samples.length ? this.samples[this.samples.length - 1].v : null;
  }
}

const fmt = (v) => (v >= 1000 ? `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k` : Number.isInteger(v) ? String(v) : v.toFixed(1));

/** A "nice" upper bound for the y axis (1, 2, 5 × 10^n), at least `min`. */
export function niceMax(v, min = 1) {
  const x = Math.max(v, min);
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

/** The SVG of one series as a line chart over the window ending at `now`: an area under the line,
 * the y axis' top value, and the time span. `data-*` attributes say what it shows (for tests and
 * for the curious). */
export function chartSvg(series, { now, label, width = 320, height = 90, color = "#335cff" }) {
  const pad = { l: 34, r: 6, t: 8, b: 16 };
  const w = width - pad.l - pad.r, h = height - pad.t - pad.b;
  const pts = series.samples.filter((s) => s.t >= now - series.windowMs);
  const top = niceMax(Math.max(0, ...pts.map((p) => p.v)));
  const x = (t) => pad.l + w * (1 - (now - t) / series.windowMs);
  const y = (v) => pad.t + h * (1 - v / top);
  const line = pts.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
  const area = pts.length > 1
    ? `<polygon fill="${color}" fill-opacity="0.12" points="${x(pts[0].t).toFixed(1)},${y(0)} ${line} ${x(pts[pts.length - 1].t).toFixed(1)},${y(0)}"/>`
    : "";
  const minutes = Math.round(series.windowMs / 60000);
  return `<svg class="chart" viewBox="0 0 ${width} ${height}" preserveAspectRatio="none" role="img"
    aria-label="${label}: last ${minutes} minutes" data-points="${pts.length}" data-last="${series.last ?? ""}" data-max="${top}">
    <line x1="${pad.l}" y1="${y(0)}" x2="${width - pad.r}" y2="${y(0)}" stroke="#e2e5ef"/>
    <line x1="${pad.l}" y1="${y(top)}" x2="${width - pad.r}" y2="${y(top)}" stroke="#e2e5ef" stroke-dasharray="3 3"/>
    <text x="${pad.l - 4}" y="${y(top) + 4}" text-anchor="end" font-size="10" fill="#687089">${fmt(top)}</text>
    <text x="${pad.l - 4}" y="${y(0) + 3}" text-anchor="end" font-size="10" fill="#687089">0</text>
    <text x="${pad.l}" y="${height - 3}" font-size="10" fill="#687089">−${minutes} min</text>
    <text x="${width - pad.r}" y="${height - 3}" text-anchor="end" font-size="10" fill="#687089">now</text>
    ${area}
    ${pts.length ? `<polyline fill="none" stroke="${color}" stroke-width="1.5" stroke-linejoin="round" points="${line}"/>` : ""}
    ${pts.length ? `<circle cx="${x(pts[pts.length - 1].t).toFixed(1)}" cy="${y(pts[pts.length - 1].v).toFixed(1)}" r="2.5" fill="${color}"/>` : ""}
  </svg>`;
}

/** Rates from counters: remembers the last total per name and turns the next into a per-second
 * rate (null on the first sample, or when a counter went backwards: a server restart). */
export class Rates {
  constructor() {
    this.last = new Map();
  }
  rate(name, t, total) {
    if (total == null || !Number.isFinite(total)) return null;
    const prev = this.last.get(name);
    this.last.set(name, { t, total });
    if (!prev || t <= prev.t || total < prev.total) return null;
    return (total - prev.total) / ((t - prev.t) / 1000);
  }
}
