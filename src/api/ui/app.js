// The dashboard (placeholder until the panels land).
const state = document.getElementById("state");
fetch("../health").then((r) => r.json()).then((h) => {
  state.textContent = `agentsd ${h.version}: ${h.status}`;
});
