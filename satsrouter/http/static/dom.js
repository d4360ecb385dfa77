// Building the page from data: elements made with textContent only (never innerHTML), so
// nothing the node returns (model names, setting values, errors) can become markup.

/** An element: h("p", {class: "x"}, "text", child, [more children]). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace what `el` shows. */
export function show(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

const grouped = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

/** An integer with thousands separators: 12,345. */
export function int(n) {
  return grouped.format(n);
}

/** Exact sats from msat, no float on the way: 12345 -> "12.345 sat", 2000 -> "2 sat". */
export function sat(msat) {
  const sign = msat < 0 ? "-" : "";
  const abs = Math.abs(msat);
  const whole = Math.floor(abs / 1000);
  const frac = String(abs % 1000).padStart(3, "0").replace(/0+$/, "");
  return `${sign}${int(whole)}${frac ? "." + frac : ""} sat`;
}

/** An amount as the operator reads it, sats first and the exact msat beside it. */
export function money(msat, key) {
  if (typeof msat !== "number") return h("span", { class: "muted" }, "—");
  return h(
    "span",
    { class: "money", "data-figure": key, "data-msat": msat },
    h("span", { class: "sat" }, sat(msat)),
    " ",
    h("small", { class: "msat" }, `${int(msat)} msat`),
  );
}

/** A time from the API (epoch seconds or an ISO string) in UTC. */
export function when(value) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value === "number") {
    const ms = value < 1e12 ? value * 1000 : value;
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }
  return String(value);
}

/** A headline figure: label above a big value. */
export function figure(label, value, key) {
  return h(
    "div",
    { class: "figure" },
    h("div", { class: "label" }, label),
    h("div", { class: "value", "data-figure": key }, value),
  );
}

/** A table from column headings and rows of cells (strings or elements). */
export function table(headings, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      rows.length ? rows : h("tr", {}, h("td", { colspan: headings.length, class: "muted" }, "None yet.")),
    ),
  );
}

/** Why a part of the page is empty: the node lacks the endpoint, or the call failed. */
export function problem(result, what) {
  if (result.missing) {
    return h(
      "p",
      { class: "notice", "data-state": "unavailable" },
      `${what} is not available on this node yet (the API answered ${result.status}).`,
    );
  }
  const message = result.error?.message ?? `HTTP ${result.status}`;
  return h("p", { class: "error", "data-state": "error", role: "alert" }, `${what}: ${message}`);
}
