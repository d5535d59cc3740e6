// Review page actions: each <form data-action> posts its fields as JSON to the case API.
"use strict";

function zoneOffset(timeZone, instant) {
  // "+02:00": the UTC offset of an IANA time zone at an instant
  const name = new Intl.DateTimeFormat("en-US", { timeZone, timeZoneName: "longOffset" })
    .formatToParts(instant)
    .find((p) => p.type === "timeZoneName").value; // "GMT+02:00", or "GMT" for UTC itself
  const m = name.match(/^GMT([+-]\d{2}):?(\d{2})?$/);
  return m ? `${m[1]}:${m[2] || "00"}` : "+00:00";
}

function inZone(local, form) {
  // datetime-local has no zone: the deadline is meant in the service's time zone (data-zone), with the
  // offset in force on that date (summer time), not today's; data-offset (today's) if the browser cannot tell
  const stamp = `${local}:00`;
  try {
    let offset = zoneOffset(form.dataset.zone, new Date(`${stamp}Z`));
    offset = zoneOffset(form.dataset.zone, new Date(`${stamp}${offset}`)); // the offset at that time itself
    return `${stamp}${offset}`;
  } catch (err) {
    return `${stamp}${form.dataset.offset || "Z"}`;
  }
}

function payload(form) {
  const data = {};
  for (const [name, value] of new FormData(form).entries()) {
    if (value === "") continue;
    data[name] = value;
  }
  if (data.deadline) data.deadline = inZone(data.deadline, form);
  // the version this page showed: if another reviewer acted meanwhile, the service refuses (409)
  // instead of letting this page's decision silently replace theirs
  data.version = Number(form.dataset.version);
  return data;
}

async function submit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const error = document.getElementById("action-error");
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  try {
    const response = await fetch(`/v1/cases/${form.dataset.case}/${form.dataset.action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(payload(form)),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const failure = new Error(typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`);
      failure.stale = response.status === 409; // the case moved on: this page's buttons no longer apply
      failure.signedOut = response.status === 401; // the session ended: signed out, expired, or its key revoked
      throw failure;
    }
    window.location.reload();
  } catch (err) {
    error.textContent = `操作失败 Action failed: ${err.message} `;
    if (err.signedOut) {
      // nothing on this page works without a valid session: sign in again, and come back here
      error.textContent = `操作失败，登录已失效 Action failed: your session is no longer valid (${err.message}). `;
      document.querySelectorAll("form[data-action] button").forEach((b) => (b.disabled = true));
      const signin = document.createElement("a");
      signin.href = `/ui/login?${new URLSearchParams({ next: window.location.pathname + window.location.search })}`;
      signin.id = "signin";
      signin.textContent = "重新登录 Sign in again";
      error.append(signin);
    } else if (err.stale) {
      // the case moved on: no action of this page applies any more, whatever is tried next
      document.querySelectorAll("form[data-action] button").forEach((b) => (b.disabled = true));
      const reload = document.createElement("a");
      reload.href = window.location.pathname + window.location.search; // the way back to the list kept
      reload.id = "reload";
      reload.textContent = "重新载入 Reload";
      error.append(reload);
    } else {
      buttons.forEach((b) => (b.disabled = false));
    }
    error.hidden = false;
  }
}

function narrowClasses(form) {
  // relabel: only the detector classes that evidence the chosen type (parking: car, motorbike, bicycle),
  // the case's own class when it is one of them
  const type = form.querySelector("select[name=type]");
  const cls = form.querySelector("select[name=detector_class]");
  if (!type || !cls || !type.dataset.sources) return;
  const allowed = JSON.parse(type.dataset.sources)[type.value] || [];
  for (const option of cls.options) option.hidden = option.disabled = !allowed.includes(option.value);
  if (!allowed.includes(cls.value)) cls.value = allowed.includes(cls.dataset.current) ? cls.dataset.current : allowed[0];
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-action]").forEach((form) => {
    form.addEventListener("submit", submit);
    const type = form.querySelector("select[name=type]");
    if (type) {
      narrowClasses(form);
      type.addEventListener("change", () => narrowClasses(form));
    }
  });
});
