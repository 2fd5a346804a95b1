// A line diff of two JSON values (pretty-printed, keys sorted so that key order never shows as a
// change), for the key page's history: the longest common subsequence of lines.

/** Lines this long (each side) at most are diffed line by line; past it the whole texts are shown
 * as removed and added (the LCS table is n × m). */
const MAX_LINES = 1500;

function sorted(v) {
  if (Array.isArray(v)) return v.map(sorted);
  if (v && typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])]));
  return v;
}

export const prettySorted = (v) => (v === undefined ? "" : JSON.stringify(sorted(v), null, 2));

/** `[{op: " " | "-" | "+", line}]` turning `a` into `b`. */
export function lineDiff(a, b) {
  const x = prettySorted(a).split("\n").filter((l, i, all) => l !== "" || all.length > 1);
  const y = prettySorted(b).split("\n").filter((l, i, all) => l !== "" || all.length > 1);
  if (x.length > MAX_LINES || y.length > MAX_LINES) {
    return [...x.map((line) => ({ op: "-", line })), ...y.map((line) => ({ op: "+", line }))];
  }
  const n = x.length, m = y.length;
  // lcs[i][j]: the LCS length of x[i..] and y[j..].
  const lcs = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push({ op: " ", line: x[i] }); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) out.push({ op: "-", line: x[i++] });
    else out.push({ op: "+", line: y[j++] });
  }
  while (i < n) out.push({ op: "-", line: x[i++] });
  while (j < m) out.push({ op: "+", line: y[j++] });
  return out;
}
