// The read-mostly views: overview (usage and revenue), models and prices, providers, keys.

import { api } from "./api.js";
import { barChart } from "./charts.js";
import { figure, h, int, money, problem, sat, show, table, when } from "./dom.js";

const DAYS = 30;

function loading(el) {
  show(el, h("p", { class: "muted" }, "Loading…"));
}

function usageRows(rows, key) {
  return rows.map((row) =>
    h(
      "tr",
      {},
      h("td", {}, row[key]),
      h("td", { class: "num" }, int(row.requests)),
      h("td", { class: "num" }, int(row.errors)),
      h("td", { class: "num" }, int(row.input_tokens)),
      h("td", { class: "num" }, int(row.output_tokens)),
      h("td", { class: "num" }, money(row.revenue_msat)),
    ),
  );
}

const USAGE_HEADINGS = ["Requests", "Errors", "Input tokens", "Output tokens", "Revenue"];

/** Totals, a chart of revenue and one of requests per day, and the split by model and upstream. */
export async function overview(el) {
  loading(el);
  const usage = await api(`/admin/api/usage?days=${DAYS}`);
  if (!usage.ok) return show(el, problem(usage, "Usage figures"));
  const { totals, by_day: days = [], by_model: byModel = [], by_provider: byProvider = [] } =
    usage.data;
  show(
    el,
    h(
      "div",
      { class: "figures" },
      figure("Requests", int(totals.requests), "requests"),
      figure("Errors", int(totals.errors), "errors"),
      figure("Revenue", money(totals.revenue_msat, "revenue"), "revenue-figure"),
      figure("Input tokens", int(totals.input_tokens), "input-tokens"),
      figure("Output tokens", int(totals.output_tokens), "output-tokens"),
    ),
    h("p", { class: "muted" }, `Since ${when(usage.data.since)}.`),
    h(
      "div",
      { class: "charts" },
      h(
        "figure",
        { class: "card" },
        h("figcaption", {}, "Revenue per day"),
        barChart({
          title: "Revenue per day",
          key: "revenue",
          points: days.map((d) => ({ label: d.day, value: d.revenue_msat, text: sat(d.revenue_msat) })),
          axis: sat,
        }),
      ),
      h(
        "figure",
        { class: "card" },
        h("figcaption", {}, "Requests per day"),
        barChart({
          title: "Requests per day",
          key: "requests",
          points: days.map((d) => ({ label: d.day, value: d.requests, text: `${d.requests} requests, ${d.errors} errors` })),
          axis: int,
        }),
      ),
    ),
    h("h2", {}, "By model"),
    table(["Model", ...USAGE_HEADINGS], usageRows(byModel, "model"), { "data-table": "by-model" }),
    h("h2", {}, "By provider"),
    table(["Provider", ...USAGE_HEADINGS], usageRows(byProvider, "provider"), {
      "data-table": "by-provider",
    }),
  );
}

// sats per token as published -> msat per token, the unit the node charges in (no float noise).
function msatPer(sats) {
  return typeof sats === "number" ? String(Number((sats * 1000).toFixed(6))) : "—";
}

/** Every model with its prices as charged: msat per token, sat per request, the most it costs. */
export async function models(el) {
  loading(el);
  const result = await api("/v1/models");
  if (!result.ok) return show(el, problem(result, "The model list"));
  const all = result.data.data ?? [];
  const body = h("tbody");
  const filter = h("input", { type: "search", placeholder: "Filter models", "aria-label": "Filter models" });
  const render = () => {
    const needle = filter.value.trim().toLowerCase();
    const rows = all
      .filter((m) => !needle || m.id.toLowerCase().includes(needle) || String(m.provider).includes(needle))
      .map((m) => {
        const p = m.sats_pricing;
        return h(
          "tr",
          { "data-model": m.id },
          h("td", {}, h("span", { class: "mono" }, m.id), h("div", { class: "muted" }, m.name ?? "")),
          h("td", {}, m.provider ?? "—"),
          h("td", { class: "num" }, int(m.context_length ?? 0)),
          h("td", { class: "num" }, p ? msatPer(p.prompt) : `$${m.pricing?.prompt ?? "?"}`),
          h("td", { class: "num" }, p ? msatPer(p.completion) : `$${m.pricing?.completion ?? "?"}`),
          h("td", { class: "num" }, p ? `${p.request ?? 0} sat` : "—"),
          h("td", { class: "num" }, typeof m.max_cost === "number" ? `${m.max_cost} sat` : "—"),
        );
      });
    show(body, rows);
  };
  filter.addEventListener("input", render);
  render();
  show(
    el,
    h("p", { class: "muted" }, `${all.length} models. Prices include this node's fee.`, " ", filter),
    h(
      "table",
      { "data-table": "models" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Model", "Provider", "Context", "Prompt msat/token", "Completion msat/token", "Per request", "Max cost"].map(
            (t) => h("th", {}, t),
          ),
        ),
      ),
      body,
    ),
    all.some((m) => !m.sats_pricing)
      ? h("p", { class: "notice" }, "No exchange rate yet: prices are shown in USD.")
      : null,
  );
}

/** The upstreams and what health checks and real traffic say about them. */
export async function providers(el) {
  loading(el);
  const result = await api("/v1/providers");
  if (!result.ok) return show(el, problem(result, "The provider list"));
  const rows = (result.data.providers ?? []).map((p) =>
    h(
      "tr",
      { "data-provider": p.name },
      h("td", {}, p.display_name ?? p.name, h("div", { class: "muted" }, p.description ?? "")),
      h("td", {}, h("span", { class: `badge status-${p.status}`, "data-status": p.status }, p.status)),
      h("td", { class: "num" }, p.latency_ms === null || p.latency_ms === undefined ? "—" : `${Math.round(p.latency_ms)} ms`),
      h("td", { class: "num" }, typeof p.error_rate === "number" ? `${(p.error_rate * 100).toFixed(1)} %` : "—"),
      h("td", {}, when(p.last_checked)),
      h("td", {}, p.configured ? "yes" : "no credentials"),
      h("td", { class: "num" }, int((p.models ?? []).length)),
    ),
  );
  show(
    el,
    table(["Provider", "Status", "Latency", "Error rate", "Last checked", "Configured", "Models"], rows, {
      "data-table": "providers",
    }),
  );
}

const PAGE = 50;

function keyRow(key, onChange) {
  const toggle = h(
    "button",
    {
      type: "button",
      class: key.disabled ? "" : "danger",
      "data-action": key.disabled ? "enable" : "disable",
      onclick: async () => {
        toggle.disabled = true;
        const action = key.disabled ? "enable" : "disable";
        const result = await api(`/admin/api/keys/${encodeURIComponent(key.hash_prefix)}/${action}`, {
          method: "POST",
        });
        if (result.ok) onChange(row, keyRow(result.data, onChange));
        else {
          toggle.disabled = false;
          row.after(h("tr", {}, h("td", { colspan: 9 }, problem(result, `Could not ${action} the key`))));
        }
      },
    },
    key.disabled ? "Enable" : "Disable",
  );
  const row = h(
    "tr",
    { "data-key": key.hash_prefix, class: key.disabled ? "disabled" : "" },
    h("td", { class: "mono" }, key.hash_prefix, key.parent ? h("div", { class: "muted" }, `child of ${key.parent}`) : null),
    h("td", {}, key.kind ?? "—", h("div", { class: "muted" }, key.unit ?? "")),
    h("td", { class: "num" }, money(key.balance_msat)),
    h("td", { class: "num" }, money(key.reserved_msat)),
    h("td", { class: "num" }, money(key.total_spent_msat)),
    h("td", { class: "num" }, int(key.total_requests ?? 0)),
    h("td", {}, when(key.last_used_at), h("div", { class: "muted" }, `created ${when(key.created_at)}`)),
    h("td", {}, when(key.expires_at)),
    h("td", {}, h("span", { class: "badge", "data-state": key.disabled ? "disabled" : "active" }, key.disabled ? "disabled" : "active"), " ", toggle),
  );
  return row;
}

/** Keys by hash prefix, newest first as the API gives them, with disable and enable. */
export async function keys(el, offset = 0) {
  loading(el);
  const result = await api(`/admin/api/keys?limit=${PAGE}&offset=${offset}`);
  if (!result.ok) return show(el, problem(result, "The key list"));
  const { keys: list = [], total = list.length } = result.data;
  const replace = (oldRow, newRow) => oldRow.replaceWith(newRow);
  const pager = h(
    "p",
    { class: "pager" },
    h("button", { type: "button", disabled: offset === 0, onclick: () => keys(el, Math.max(0, offset - PAGE)) }, "‹ Newer"),
    ` ${list.length ? offset + 1 : 0}–${offset + list.length} of ${int(total)} `,
    h("button", { type: "button", disabled: offset + PAGE >= total, onclick: () => keys(el, offset + PAGE) }, "Older ›"),
  );
  show(
    el,
    table(
      ["Key", "Kind", "Balance", "Reserved", "Spent", "Requests", "Last used", "Expires", "State"],
      list.map((key) => keyRow(key, replace)),
      { "data-table": "keys" },
    ),
    pager,
  );
}
