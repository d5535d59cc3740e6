// Review page actions: each <form data-action> posts its fields as JSON to the case API.
"use strict";

function payload(form) {
  // datetime-local has no zone: the deadline is meant in the service's time zone (data-offset, e.g. +08:00)
  const data = {};
  for (const [name, value] of new FormData(form).entries()) {
    if (value === "") continue;
    data[name] = value;
  }
  if (data.deadline) data.deadline = `${data.deadline}:00${form.dataset.offset || "Z"}`;
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
      throw new Error(typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`);
    }
    window.location.reload();
  } catch (err) {
    error.textContent = `操作失败 Action failed: ${err.message}`;
    error.hidden = false;
    buttons.forEach((b) => (b.disabled = false));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-action]").forEach((form) => form.addEventListener("submit", submit));
});
