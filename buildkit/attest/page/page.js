// The operator's read-only view: /api/devices, rendered with textContent only (no HTML from data).
"use strict";

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "";
}

function cell(row, text, name) {
  const td = document.createElement("td");
  td.textContent = text;
  if (name) td.className = name;
  row.appendChild(td);
}

function render(devices) {
  const body = document.querySelector("#fleet tbody");
  body.replaceChildren();
  for (const device of devices) {
    const row = document.createElement("tr");
    row.className = "state-" + device.state;
    row.dataset.hostname = device.hostname;
    const report = device.last_report;
    const decision = device.last_decision;
    cell(row, device.hostname, "hostname");
    cell(row, device.state + (device.approval_pending ? " (approved, awaiting report)" : ""), "state");
    cell(row, report ? when(report.at) + (report.accepted ? "" : " rejected: " + report.rejection) : "none", "report");
    cell(row, decision ? decision.decision + " " + when(decision.at) : "none", "decision");
    cell(row, decision ? decision.reasons.join("; ") : "", "reasons");
    body.appendChild(row);
  }
  document.getElementById("status").textContent =
    devices.length + " device(s), " + devices.filter((d) => d.state === "quarantine").length +
    " quarantined; updated " + new Date().toISOString().slice(11, 19) + "Z";
}

async function refresh() {
  try {
    const response = await fetch("/api/devices", { cache: "no-store" });
    render(await response.json());
  } catch (error) {
    document.getElementById("status").textContent = "verifier unreachable: " + error;
  }
}

refresh();
setInterval(refresh, Number(document.body.dataset.refreshMs) || 2000);
