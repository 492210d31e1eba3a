// The agent editor (admin keys, with `api_edits` on): a new agent's table,
// or an existing one's, as TOML in a dialog. The daemon checks the whole
// config file with the edit as `config check` does, and writes it only if
// the file is still the version read (its ETag): any refusal shows in the
// dialog, which stays open with the text as typed.

import * as api from "./api.js";
import { setText } from "./util.js";

const $ = (id) => document.getElementById(id);

/** What a new agent's table starts as. */
const TEMPLATE = 'command = ["/path/to/program", "--flag"]\n# env = { LOG_LEVEL = "info" }\n# restart = "always"\n';

export class Editor {
  /** `done(text)`: an edit was applied (a line for the page to show). */
  constructor(done) {
    this.done = done;
    this.dialog = $("editor");
    this.idBox = $("editor-id");
    this.text = $("editor-text");
    this.error = $("editor-error");
    this.etag = null;
    this.editing = null; // the id of an existing agent, or null for a new one
    $("editor-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.save();
    });
    $("editor-cancel").addEventListener("click", () => this.dialog.close());
  }

  /** Opens a new agent's table. */
  create() {
    this.editing = null;
    this.etag = null;
    setText($("editor-title"), "New agent");
    this.idBox.value = "";
    this.idBox.disabled = false;
    this.text.value = TEMPLATE;
    setText(this.error, "");
    this.dialog.showModal();
    this.idBox.focus();
  }

  /** Opens agent `id`'s table as the config file has it. */
  async edit(id) {
    let got;
    try {
      got = await api.agentConfig(id);
    } catch (e) {
      this.done(`edit ${id}: ${e.message}`);
      return;
    }
    if (got.text == null) {
      this.done(`edit ${id}: it is not in the config file`);
      return;
    }
    this.editing = id;
    this.etag = got.etag;
    setText($("editor-title"), `Edit ${id}`);
    this.idBox.value = id;
    this.idBox.disabled = true;
    this.text.value = got.text;
    setText(this.error, "");
    this.dialog.showModal();
    this.text.focus();
  }

  async save() {
    const id = this.idBox.value.trim();
    const save = $("editor-save");
    save.disabled = true;
    setText(this.error, "");
    try {
      let etag = this.etag;
      if (this.editing === null) {
        // A new agent: made on the file as it is now, never over one there.
        const got = await api.agentConfig(id);
        if (got.text != null) {
          setText(this.error, `An agent named ${id} is in the config already: edit it instead.`);
          return;
        }
        etag = got.etag;
      }
      const r = await api.putAgentConfig(id, this.text.value, etag);
      this.dialog.close();
      const keys = r.changed.length ? ` (${r.changed.join(", ")})` : "";
      this.done(`${r.agent_id}: ${r.action}${keys}`);
    } catch (e) {
      const why = e.status === 412 ? `${e.message}\nClose and open the editor again to start from the file as it is now.` : e.message;
      setText(this.error, why);
    } finally {
      save.disabled = false;
    }
  }
}
