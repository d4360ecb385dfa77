// The one door to the node's API: JSON in and out, the error envelope unpacked, and a 401
// on any admin route sending the browser back to the login form.

let onUnauthorized = () => {};

/** What to do when the session is gone (expired, logged out elsewhere). */
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

/**
 * Call the API. Never throws: returns {ok, status, data, error, missing}, where `missing`
 * means this node has no such route (an endpoint not built yet), not a failure of one.
 */
export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, credentials: "same-origin", cache: "no-store", headers: { ...headers } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    return { ok: false, status: 0, data: null, error: { message: `no answer (${err.message})` } };
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  const error = resp.ok ? null : (data?.error ?? { message: `HTTP ${resp.status}` });
  const missing =
    (resp.status === 404 || resp.status === 405) &&
    ["not_found", "method_not_allowed", undefined].includes(error?.type);
  if (resp.status === 401 && path.startsWith("/admin/api/") && !path.endsWith("/login")) {
    onUnauthorized();
  }
  return { ok: resp.ok, status: resp.status, data, error, missing };
}
