// Bar charts as inline SVG, drawn here: no chart library, nothing loaded from elsewhere.
// Colours come from style.css classes (the CSP allows no inline styles).

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 180;
const PAD = { top: 16, right: 8, bottom: 24, left: 84 };

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

/**
 * A bar per point: points are {label, value, text}; `text` is the tooltip's figure, and
 * `axis(max)` labels the top of the scale.
 */
export function barChart({ title, points, axis = String, key }) {
  const svg = s("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": title,
    "data-chart": key,
  });
  svg.append(s("title", {}, title));
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const max = Math.max(0, ...points.map((p) => p.value));
  const baseline = PAD.top + plotH;

  svg.append(s("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: baseline, y2: baseline, class: "axis" }));
  svg.append(s("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: PAD.top, y2: PAD.top, class: "grid" }));
  svg.append(s("text", { x: PAD.left - 6, y: PAD.top + 4, class: "tick end" }, axis(max)));
  svg.append(s("text", { x: PAD.left - 6, y: baseline, class: "tick end" }, axis(0)));

  if (points.length === 0 || max === 0) {
    svg.append(s("text", { x: PAD.left + plotW / 2, y: PAD.top + plotH / 2, class: "tick middle" }, "nothing yet"));
  }
  const step = points.length ? plotW / points.length : 0;
  const gap = Math.min(4, step * 0.2);
  points.forEach((p, i) => {
    const height = max > 0 ? (p.value / max) * plotH : 0;
    const bar = s("rect", {
      x: PAD.left + i * step + gap / 2,
      y: baseline - height,
      width: Math.max(1, step - gap),
      height,
      class: "bar",
      "data-label": p.label,
      "data-value": p.value,
    });
    bar.append(s("title", {}, `${p.label}: ${p.text ?? p.value}`));
    svg.append(bar);
  });
  if (points.length) {
    svg.append(s("text", { x: PAD.left, y: HEIGHT - 6, class: "tick" }, points[0].label));
    svg.append(s("text", { x: WIDTH - PAD.right, y: HEIGHT - 6, class: "tick end" }, points.at(-1).label));
  }
  return svg;
}
