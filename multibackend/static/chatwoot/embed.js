// The page Chatwoot shows in its Dashboard App iframe: finds the account, waits for its company, then shows it.
import { STRINGS, pickLanguage } from "./embed-i18n.js";

const FETCH_INFO_REQUEST = "chatwoot-dashboard-app:fetch-info";
const APP_CONTEXT_TIMEOUT_MS = 4000;
const FIRST_POLL_DELAY_MS = 1000;
const POLL_DELAY_STEP_MS = 500;
const MAX_POLL_DELAY_MS = 5000;
const REQUEST_TIMEOUT_MS = 8000;
const PENDING_REFRESH_MS = 5000;
const ACCOUNT_ID_PATTERN = /^[1-9][0-9]{0,18}$/;

const params = new URLSearchParams(window.location.search);
const language = pickLanguage(params.get("lang"), navigator.languages || [navigator.language]);
const text = STRINGS[language];
const settings = readSettings(document.body.dataset);
const elements = findElements(
  "app", "spinner", "status", "hint", "retry", "company", "company-name", "chatwoot-status",
  "provisioning-status", "provisioning-note", "company-id", "redis-prefix", "vector-index", "chatwoot-account-id",
  "created-at",
);

function readSettings(data) {
  const waitSeconds = Number.parseFloat(data.waitSeconds);
  return {
    lookupUrl: data.lookupUrl,
    waitMs: (waitSeconds > 0 ? waitSeconds : 30) * 1000,
    signature: data.signed === "true" ? params.get("sig") : null,
  };
}

function findElements(...ids) {
  return Object.fromEntries(ids.map((id) => [id, document.getElementById(id)]));
}

function translatePage() {
  document.documentElement.lang = language;
  document.title = text.title;
  for (const element of document.querySelectorAll("[data-i18n]")) {
    element.textContent = text[element.dataset.i18n];
  }
}

// ---- views -------------------------------------------------------------------------------------------------------

function showMessage(view, status, hint = "", { busy = false, retryable = false } = {}) {
  elements.app.dataset.view = view;
  elements.status.textContent = status;
  elements.hint.textContent = hint;
  elements.spinner.hidden = !busy;
  elements.retry.hidden = !retryable;
  elements.status.classList.remove("visually-hidden");
  elements.company.hidden = true;
}

function showCompany(company) {
  elements.app.dataset.view = "company";
  elements.status.textContent = text.ready;
  elements.status.classList.add("visually-hidden");
  elements.hint.textContent = "";
  elements.spinner.hidden = true;
  elements.retry.hidden = true;
  fillCompany(company);
  elements.company.hidden = false;
}

function fillCompany(company) {
  const provisioning = company.provisioning_status;
  elements["company-name"].textContent = company.company_name;
  elements["company-id"].textContent = company.company_id;
  elements["redis-prefix"].textContent = company.redis_prefix;
  elements["vector-index"].textContent = company.vectorstore_index;
  elements["chatwoot-account-id"].textContent = company.chatwoot_account_id;
  elements["created-at"].textContent = formatDate(company.created_at);
  elements["provisioning-status"].textContent = text.provisioningStates[provisioning] || provisioning;
  elements["provisioning-status"].dataset.state = provisioning;
  showOptionalText(elements["provisioning-note"], text.provisioningNotes[provisioning]);
  showOptionalText(elements["chatwoot-status"], text.chatwootStates[company.chatwoot_status]);
  elements["chatwoot-status"].dataset.state = company.chatwoot_status;
}

function showOptionalText(element, value) {
  element.textContent = value || "";
  element.hidden = !value;
}

function formatDate(iso) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) {
    return "—";
  }
  return new Intl.DateTimeFormat(language, { dateStyle: "medium", timeStyle: "short" }).format(date);
}

// ---- the account id: from the URL, or from Chatwoot's appContext ----------------------------------------------

/** {accountId}, or {accountId: null, failure} naming what went wrong. */
async function resolveAccountId() {
  const fromUrl = params.get("accountId");
  if (fromUrl) {
    return { accountId: validAccountId(fromUrl), failure: "invalidAccount" };
  }
  if (window.parent === window) {
    return { accountId: null, failure: "missingAccount" };
  }
  showMessage("connecting", text.connecting, "", { busy: true });
  return { accountId: await askChatwootForAccountId(), failure: "missingAccount" };
}

function validAccountId(value) {
  const candidate = String(value ?? "").trim();
  return ACCOUNT_ID_PATTERN.test(candidate) ? candidate : null;
}

/** Ask the parent (Chatwoot) for its appContext; resolves to the account id, or null when none comes in time. */
function askChatwootForAccountId() {
  return new Promise((resolve) => {
    const timer = window.setTimeout(() => finish(null), APP_CONTEXT_TIMEOUT_MS);
    function finish(accountId) {
      window.clearTimeout(timer);
      window.removeEventListener("message", onMessage);
      resolve(accountId);
    }
    function onMessage(event) {
      const accountId = event.source === window.parent ? accountIdOfAppContext(event.data) : null;
      if (accountId) {
        finish(accountId);
      }
    }
    window.addEventListener("message", onMessage);
    window.parent.postMessage(FETCH_INFO_REQUEST, "*");
  });
}

/** Chatwoot sends appContext as a JSON string; anything else (other apps, extensions) is ignored. */
function accountIdOfAppContext(data) {
  if (typeof data !== "string") {
    return null;
  }
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    return null;
  }
  if (message?.event !== "appContext") {
    return null;
  }
  return validAccountId(message.data?.conversation?.account_id);
}

// ---- the lookup --------------------------------------------------------------------------------------------------

/**
 * One lookup. Resolves to {company} when it exists, {failure} when polling cannot fix it,
 * or {retryAfterMs} when it does not exist yet or the server asks us to slow down or is briefly unavailable.
 */
async function lookUp(accountId) {
  let response;
  try {
    response = await fetch(lookupUrl(accountId), {
      headers: { Accept: "application/json" },
      cache: "no-store",
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
  } catch {
    return { retryAfterMs: 0 };
  }
  if (response.status === 429 || response.status >= 500) {
    return { retryAfterMs: retryAfterMs(response.headers.get("Retry-After")) };
  }
  if (response.status === 400) {
    return { failure: "invalidAccount" };
  }
  if (response.status === 401 || response.status === 403) {
    return { failure: "forbidden" };
  }
  if (!response.ok) {
    return { failure: "unavailable" };
  }
  const body = await response.json().catch(() => null);
  return body?.data?.exists ? { company: body.data } : { retryAfterMs: 0 };
}

function lookupUrl(accountId) {
  const url = new URL(settings.lookupUrl.replace("ACCOUNT_ID", encodeURIComponent(accountId)), window.location.href);
  if (settings.signature) {
    url.searchParams.set("sig", settings.signature);
  }
  return url;
}

/** Retry-After in milliseconds: delay-seconds or an HTTP date; 0 when absent or unreadable. */
function retryAfterMs(value) {
  if (!value) {
    return 0;
  }
  const seconds = Number(value);
  if (Number.isFinite(seconds)) {
    return Math.max(0, seconds * 1000);
  }
  const date = Date.parse(value);
  return Number.isNaN(date) ? 0 : Math.max(0, date - Date.now());
}

function pollDelayMs(attempt) {
  return Math.min(FIRST_POLL_DELAY_MS + attempt * POLL_DELAY_STEP_MS, MAX_POLL_DELAY_MS);
}

function sleep(ms) {
  return new Promise((resolve) => window.setTimeout(resolve, ms));
}

// ---- the flow ----------------------------------------------------------------------------------------------------

/** Poll with a growing delay for one wait period; the last lookup happens when the period ends. */
async function waitForCompany(accountId) {
  const deadline = Date.now() + settings.waitMs;
  showMessage("waiting", text.waiting, text.waitingHint, { busy: true });
  for (let attempt = 0; ; attempt += 1) {
    const answer = await lookUp(accountId);
    if (answer.company) {
      showCompanyAndFollowPending(accountId, answer.company);
      return;
    }
    if (answer.failure) {
      showFailure(answer.failure);
      return;
    }
    const remaining = deadline - Date.now();
    if (remaining <= 0 || answer.retryAfterMs >= remaining) {
      await sleep(Math.max(remaining, 0));
      showMessage("timeout", text.timeout, text.timeoutHint, { retryable: true });
      return;
    }
    await sleep(Math.min(Math.max(pollDelayMs(attempt), answer.retryAfterMs), remaining));
  }
}

/** A company still being provisioned is looked up again until it is ready (or failed), so the page updates itself. */
function showCompanyAndFollowPending(accountId, company) {
  showCompany(company);
  if (company.provisioning_status !== "pending") {
    return;
  }
  window.setTimeout(async () => {
    const answer = await lookUp(accountId);
    showCompanyAndFollowPending(accountId, answer.company || company);
  }, PENDING_REFRESH_MS);
}

function showFailure(failure) {
  showMessage(failure, text[failure], text[`${failure}Hint`], { retryable: failure === "unavailable" });
}

async function main() {
  translatePage();
  const { accountId, failure } = await resolveAccountId();
  if (!accountId) {
    showFailure(failure);
    return;
  }
  elements.retry.addEventListener("click", () => waitForCompany(accountId));
  await waitForCompany(accountId);
}

main();
