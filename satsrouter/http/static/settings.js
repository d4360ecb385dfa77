// The settings editor: every editable setting as a field, only what changed is sent, and the
// API's field errors shown next to the fields they name (nothing is applied then).

import { api } from "./api.js";
import { h, problem, show } from "./dom.js";

const SCHEMA = "/admin/api/settings/schema";

// The schema's `type`: boolean, integer, number, decimal (sent as a string), string, path,
// list or object. The value's own JSON type stands in for a kind this page does not know.
function isBool(s) {
  return s.type === "boolean" || typeof s.value === "boolean";
}

function isList(s) {
  return s.type === "list" || Array.isArray(s.value);
}

function isNumber(s) {
  return s.type === "integer" || s.type === "number" || typeof s.value === "number";
}

function isObject(s) {
  return s.type === "object" || (typeof s.value === "object" && s.value !== null && !isList(s));
}

function scalarList(value) {
  return Array.isArray(value) && value.every((v) => typeof v !== "object" || v === null);
}

// How a value is written in its input.
function asText(s) {
  if (s.secret) return "";
  if (s.value === null || s.value === undefined) return "";
  if (isList(s)) return scalarList(s.value) ? s.value.join(", ") : JSON.stringify(s.value);
  if (isObject(s)) return JSON.stringify(s.value);
  return String(s.value);
}

// What an input's text is sent as: typed as the setting is; text the API will refuse goes as
// it is, for the API to say why.
function fromText(s, text) {
  const trimmed = text.trim();
  if (isList(s)) {
    if (trimmed.startsWith("[")) {
      try {
        return JSON.parse(trimmed);
      } catch {
        return text;
      }
    }
    return trimmed ? trimmed.split(",").map((part) => part.trim()) : [];
  }
  if (isNumber(s) && trimmed !== "" && Number.isFinite(Number(trimmed))) return Number(trimmed);
  if (isObject(s)) {
    try {
      return JSON.parse(trimmed);
    } catch {
      return text;
    }
  }
  return text;
}

function control(s) {
  const id = `setting-${s.name}`;
  if (isBool(s)) {
    return h("input", { id, type: "checkbox", checked: s.value === true, disabled: !s.editable });
  }
  const attrs = { id, name: s.name, disabled: !s.editable, spellcheck: "false", autocomplete: "off" };
  const text = asText(s);
  if (s.secret) {
    attrs.type = "password";
    attrs.placeholder = s.value ? "set (type to replace)" : "not set";
    attrs.autocomplete = "new-password";
  }
  if (!s.secret && (text.length > 80 || isObject(s) || (isList(s) && !scalarList(s.value)))) {
    const area = h("textarea", { ...attrs, rows: 3 });
    area.value = text;
    return area;
  }
  const input = h("input", { type: "text", ...attrs });
  input.value = text;
  return input;
}

// The changed value of a field, or undefined when it still says what the node has.
function changed(s, input) {
  if (input.type === "checkbox") return input.checked !== (s.value === true) ? input.checked : undefined;
  if (s.secret) return input.value ? input.value : undefined;
  return input.value === asText(s) ? undefined : fromText(s, input.value);
}

function row(s, onReset) {
  const input = control(s);
  const error = h("div", { class: "field-error", role: "alert", "data-error-for": s.name, hidden: true });
  const reset =
    s.editable && s.source === "admin"
      ? h("button", { type: "button", class: "link", title: "Back to the environment's value or the default", onclick: () => onReset(s.name) }, "reset")
      : null;
  return {
    setting: s,
    input,
    error,
    el: h(
      "div",
      { class: `setting${s.editable ? "" : " readonly"}`, "data-setting": s.name },
      h(
        "label",
        { for: input.id },
        h("span", { class: "mono" }, s.name),
        " ",
        h("span", { class: `badge source-${s.source}`, title: "where the value comes from" }, s.source),
        s.live === false ? h("span", { class: "badge", title: "applies after a restart" }, "restart") : null,
      ),
      h("div", { class: "control" }, input, reset),
      h("div", { class: "doc muted" }, s.doc ?? "", s.env ? ` (${s.env})` : ""),
      error,
    ),
  };
}

/** The editor, from the schema: editable settings as a form, the rest listed read-only. */
export async function settings(el, notice) {
  show(el, h("p", { class: "muted" }, "Loading…"));
  const result = await api(SCHEMA);
  if (!result.ok) return show(el, problem(result, "The settings editor"));
  const all = result.data.settings ?? [];
  const message = h("p", { class: "status", role: "status", "data-state": notice ? "saved" : "" }, notice ?? "");

  const send = async (patch) => {
    for (const r of rows) {
      r.error.hidden = true;
      r.el.classList.remove("invalid");
    }
    const saved = await api("/admin/api/settings", { method: "PATCH", body: patch });
    if (saved.ok) {
      const names = Object.keys(patch).join(", ");
      return settings(el, `Saved: ${names}.`);
    }
    const fields = saved.error?.fields ?? {};
    for (const r of rows) {
      if (r.setting.name in fields) {
        r.error.textContent = fields[r.setting.name];
        r.error.hidden = false;
        r.el.classList.add("invalid");
      }
    }
    message.dataset.state = "error";
    message.textContent = saved.missing
      ? "Saving settings is not available on this node yet."
      : `Not saved: ${saved.error?.message ?? "the node refused the change"}`;
  };

  const rows = all.filter((s) => s.editable).map((s) => row(s, (name) => send({ [name]: null })));
  const fixed = all.filter((s) => !s.editable).map((s) => row(s, () => {}));
  const form = h(
    "form",
    {
      class: "settings card",
      onsubmit: async (event) => {
        event.preventDefault();
        const patch = {};
        for (const r of rows) {
          const value = changed(r.setting, r.input);
          if (value !== undefined) patch[r.setting.name] = value;
        }
        if (Object.keys(patch).length === 0) {
          message.dataset.state = "";
          message.textContent = "Nothing changed.";
          return;
        }
        await send(patch);
      },
    },
    rows.map((r) => r.el),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Save changes"), message),
  );
  show(
    el,
    h("p", { class: "muted" }, "Changes apply to the next request, on every node sharing this database. Environment values are the defaults; a value saved here wins until it is reset."),
    form,
    fixed.length
      ? h("details", { class: "card" }, h("summary", {}, `${fixed.length} settings set only in the environment`), fixed.map((r) => r.el))
      : null,
  );
}
