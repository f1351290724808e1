// The rollout page: GET /v2/models/{m}/rollout every 2 s, shown as text (never as HTML).
const $ = (id) => document.getElementById(id);
const fmt = (value, digits = 0) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

async function models() {
  const response = await fetch("/v2/repository/index", { method: "POST" });
  const rows = await response.json();
  return [...new Set(rows.filter((r) => r.state === "READY").map((r) => r.name))].sort();
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

function show(rollout) {
  $("state").textContent = rollout.state;
  $("weight").textContent = `${Math.round(rollout.weight * 100)} %`;
  $("champion").textContent = rollout.champion ?? "–";
  $("candidate").textContent = rollout.candidate ?? "–";
  $("reason").textContent = rollout.reason || "–";
  const body = $("evidence");
  body.replaceChildren();
  const evidence = rollout.evidence;
  if (evidence) {
    for (const [role, version] of [["champion", rollout.rollout_champion ?? rollout.champion], ["candidate", rollout.candidate]]) {
      const e = evidence[role];
      const row = document.createElement("tr");
      row.dataset.role = role;
      cell(row, `${role} (v${version})`);
      cell(row, fmt(e.requests));
      cell(row, fmt(e.errors));
      cell(row, fmt(e.p99_ms, 1));
      cell(row, fmt(e.labelled));
      cell(row, fmt(e.correct));
      body.appendChild(row);
    }
    $("paired").textContent =
      `Paired labelled items: ${evidence.champion_only} right only by the champion, ` +
      `${evidence.candidate_only} only by the candidate; p(candidate worse) = ${fmt(evidence.p_value_worse, 4)}, ` +
      `p(candidate better) = ${fmt(evidence.p_value_better, 4)}.`;
    const agreement = evidence.shadow_agreement === null ? "–" : `${fmt(evidence.shadow_agreement * 100, 1)} %`;
    $("shadow").textContent =
      `Shadow: ${evidence.shadow_compared} compared, top label agreement ${agreement}, ` +
      `${evidence.shadow_errors} errors, ${evidence.shadow_skipped} skipped.`;
  } else {
    $("paired").textContent = "No rollout has run for this model.";
    $("shadow").textContent = "";
  }
  const history = $("history");
  history.replaceChildren();
  for (const entry of [...(rollout.history ?? [])].reverse()) {
    const item = document.createElement("li");
    item.textContent = `${entry.at} ${entry.decision} (${entry.by}, v${entry.candidate ?? "?"}): ${entry.reason}`;
    history.appendChild(item);
  }
}

async function refresh() {
  const model = $("model").value;
  try {
    const response = await fetch(`/v2/models/${encodeURIComponent(model)}/rollout`);
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ?? response.statusText);
    $("error").textContent = "";
    show(body);
  } catch (error) {
    $("error").textContent = `Could not read the rollout: ${error.message}`;
  }
}

async function main() {
  const select = $("model");
  const names = await models();
  select.replaceChildren(...names.map((name) => new Option(name, name)));
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && names.includes(wanted)) select.value = wanted;
  select.disabled = false;
  select.addEventListener("change", refresh);
  await refresh();
  setInterval(refresh, 2000);
}

main();
