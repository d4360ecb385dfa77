// The shell: login and logout, the header, and which view the URL's #fragment shows.

import { api, whenUnauthorized } from "./api.js";
import { show } from "./dom.js";
import { keys, models, overview, providers } from "./views.js";
import { settings } from "./settings.js";
import { wallet } from "./wallet.js";

const VIEWS = { overview, models, providers, settings, wallet, keys };
const $ = (id) => document.getElementById(id);

let loggedIn = false;

function showLogin(message) {
  loggedIn = false;
  $("loading").hidden = true;
  $("nav").hidden = true;
  show($("node-name"));
  for (const name of Object.keys(VIEWS)) {
    $(`view-${name}`).hidden = true;
    show($(name)); // figures of a closed session do not stay in the page
  }
  $("login").hidden = false;
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message ?? "";
  $("password").focus();
}

async function showApp() {
  loggedIn = true;
  $("loading").hidden = true;
  $("login").hidden = true;
  $("nav").hidden = false;
  route();
  const node = await api("/admin/api/node");
  if (node.ok) $("node-name").textContent = `${node.data.name} · v${node.data.version}`;
}

function route() {
  if (!loggedIn) return;
  const name = location.hash.slice(1) in VIEWS ? location.hash.slice(1) : "overview";
  for (const other of Object.keys(VIEWS)) $(`view-${other}`).hidden = other !== name;
  for (const link of $("nav").querySelectorAll("a")) {
    link.classList.toggle("active", link.getAttribute("href") === `#${name}`);
  }
  VIEWS[name]($(name));
}

async function login(event) {
  event.preventDefault();
  const button = event.target.querySelector("button");
  button.disabled = true;
  const result = await api("/admin/api/login", {
    method: "POST",
    body: { password: $("password").value },
  });
  button.disabled = false;
  $("password").value = "";
  if (result.ok) {
    $("login-error").hidden = true;
    await showApp();
  } else {
    showLogin(result.error?.message ?? "Login failed.");
  }
}

async function logout() {
  await api("/admin/api/logout", { method: "POST" });
  history.replaceState(null, "", location.pathname);
  showLogin();
}

async function start() {
  whenUnauthorized(() => showLogin("Your session ended; log in again."));
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  const session = await api("/admin/api/session");
  if (session.ok && session.data.authenticated) await showApp();
  else showLogin();
}

start();
