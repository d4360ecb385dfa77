// The money view: ecash held per mint against what users are owed, the revenue that may be
// taken out, and the withdraw form (a Cashu token to copy, or a Lightning payment).

import { api } from "./api.js";
import { figure, h, int, money, problem, sat, show, table, when } from "./dom.js";

function mintRows(mints) {
  return mints.map((m) =>
    h(
      "tr",
      { "data-mint": m.mint_url },
      h("td", { class: "mono" }, m.mint_url, h("div", { class: "muted" }, m.unit)),
      h("td", { class: "num" }, money(m.held_msat)),
      h("td", { class: "num" }, money(m.at_mint_msat)),
      h("td", { class: "num" }, money(m.liabilities_msat)),
      h("td", { class: "num" }, money(m.payouts_in_flight_msat)),
      h("td", { class: "num" }, money(m.surplus_msat)),
      h("td", {}, m.reachable ? "yes" : h("span", { class: "badge status-offline" }, "unreachable")),
    ),
  );
}

function copyButton(field) {
  const button = h("button", { type: "button" }, "Copy");
  button.addEventListener("click", async () => {
    field.select();
    try {
      await navigator.clipboard.writeText(field.value);
    } catch {
      document.execCommand("copy"); // no clipboard API outside a secure context
    }
    button.textContent = "Copied";
  });
  return button;
}

function outcome(w) {
  if (w.token) {
    const field = h("textarea", { id: "withdraw-token", readonly: true, rows: 4, class: "mono", "aria-label": "Cashu token" });
    field.value = w.token;
    return h(
      "div",
      { class: "card success", "data-state": "withdrawn" },
      h("p", {}, `Withdrew ${int(w.amount)} ${w.unit} from ${w.mint_url}. Copy this token into your wallet now: the node does not show it again.`),
      field,
      h("p", {}, copyButton(field)),
    );
  }
  return h(
    "div",
    { class: "card success", "data-state": "withdrawn" },
    h("p", {}, `Paid ${int(w.amount)} ${w.unit} over Lightning (fee ${sat(w.fee_msat ?? 0)}).`),
  );
}

function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs https
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function withdrawForm(mints, available, onDone) {
  const result = h("div", { id: "withdraw-result" });
  const amount = h("input", { id: "withdraw-amount", type: "number", min: 1, step: 1, required: true });
  amount.value = String(Math.floor(available / 1000));
  const mint = h(
    "select",
    { id: "withdraw-mint" },
    [...new Set(mints.map((m) => m.mint_url))].map((url) => h("option", { value: url }, url)),
  );
  const destination = h("input", { id: "withdraw-destination", type: "text", placeholder: "optional: bolt11 invoice or Lightning address", autocomplete: "off", spellcheck: "false" });
  const button = h("button", { type: "submit" }, "Withdraw");
  // One key per withdrawal: sent again after a lost answer, the node returns the same
  // withdrawal instead of making a second one.
  let idempotencyKey = newKey();
  const form = h(
    "form",
    {
      class: "card",
      onsubmit: async (event) => {
        event.preventDefault();
        button.disabled = true;
        const body = { amount: Number(amount.value), unit: "sat" };
        if (mint.value) body.mint_url = mint.value;
        if (destination.value.trim()) body.destination = destination.value.trim();
        const done = await api("/admin/api/withdraw", {
          method: "POST",
          body,
          headers: { "Idempotency-Key": idempotencyKey },
        });
        // A clear answer ends this withdrawal; after no answer or a 5xx, a retry is the same one.
        if (done.status !== 0 && done.status < 500) idempotencyKey = newKey();
        button.disabled = false;
        show(result, done.ok ? outcome(done.data) : problem(done, "Withdraw"));
        if (done.ok) onDone();
      },
    },
    h("h2", {}, "Withdraw revenue"),
    h("div", { class: "row" }, h("label", { for: "withdraw-amount" }, "Amount (sat)"), amount),
    mints.length > 1 ? h("div", { class: "row" }, h("label", { for: "withdraw-mint" }, "From mint"), mint) : null,
    h("div", { class: "row" }, h("label", { for: "withdraw-destination" }, "Pay to"), destination),
    h("p", { class: "muted" }, "Without a destination the revenue comes out as a Cashu token. Only revenue can leave: what users hold stays."),
    button,
  );
  return { form, result };
}

async function figures(el) {
  const w = await api("/admin/api/wallet");
  if (!w.ok) return { ok: false, part: problem(w, "The wallet view") };
  const { revenue = {}, audit = {}, mints = [] } = w.data;
  const part = h(
    "div",
    { class: "stack" },
    h(
      "div",
      { class: "figures" },
      figure("Revenue available", money(revenue.available_msat, "available"), "available-figure"),
      figure("Earned", money(revenue.earned_msat, "earned"), "earned-figure"),
      figure("Withdrawn", money(revenue.withdrawn_msat, "withdrawn"), "withdrawn-figure"),
      figure("Owed to users", money(w.data.liabilities_msat, "liabilities"), "liabilities-figure"),
      figure(
        "Audit",
        h("span", { class: `badge ${audit.ok ? "status-online" : "status-offline"}`, "data-state": audit.ok ? "ok" : "mismatch" }, audit.ok ? "balanced" : `off by ${sat(audit.difference_msat ?? 0)}`),
        "audit",
      ),
    ),
    table(["Mint", "Held", "At the mint", "Owed", "Payouts in flight", "Surplus", "Reachable"], mintRows(mints), { "data-table": "mints" }),
  );
  return { ok: true, part, mints, available: revenue.available_msat ?? 0 };
}

async function withdrawals() {
  const list = await api("/admin/api/withdrawals");
  if (!list.ok) return problem(list, "The list of withdrawals");
  const rows = (list.data.withdrawals ?? []).map((w) =>
    h(
      "tr",
      { "data-withdrawal": w.id },
      h("td", {}, when(w.created_at)),
      h("td", {}, w.method),
      h("td", { class: "num" }, money(w.amount_msat)),
      h("td", { class: "num" }, money(w.fee_msat)),
      h("td", { class: "mono" }, w.destination ?? w.mint_url ?? ""),
      h("td", {}, w.state),
    ),
  );
  return table(["When", "How", "Amount", "Fee", "To", "State"], rows, { "data-table": "withdrawals" });
}

/** Figures, the withdraw form (its result stays while the figures refresh) and the journal. */
export async function wallet(el) {
  show(el, h("p", { class: "muted" }, "Loading…"));
  const top = h("div");
  const history = h("div");
  const refresh = async () => {
    const f = await figures(el);
    show(top, f.part);
    show(history, h("h2", {}, "Withdrawals"), await withdrawals());
    return f;
  };
  const f = await refresh();
  if (!f.ok) return show(el, f.part);
  const { form, result } = withdrawForm(f.mints, f.available, refresh);
  show(el, top, form, result, history);
}
